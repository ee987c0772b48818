"""Architectures as graphs (segdistill.search.graph) and their edit distances (segdistill.search.ged)."""
from __future__ import annotations

import itertools

import networkx as nx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from segdistill.models import build_model
from segdistill.models.layers import ConvBNAct
from segdistill.search.ged import (
    DEFAULT_COSTS,
    EditCosts,
    correspondence,
    correspondence_ged,
    edit_path_cost,
    exact_ged,
    expected_ged,
    graph_size,
)
from segdistill.search.graph import (
    ABSENT,
    SoftGraph,
    channel_bucket,
    draw_graph,
    graph_summary,
    model_graph,
    node_positions,
    nominal_strides,
    op_label,
    slot_depth,
    stage_of,
)


# ---------------------------------------------------------------------------- helpers
def graph_from(spec, edges) -> nx.DiGraph:
    """Hand-written graph: spec = [(label, stride, channels)], node ids 0..n-1; positions computed by the rule."""
    g = nx.DiGraph()
    for i, (label, stride, channels) in enumerate(spec):
        g.add_node(i, label=label, stride=stride, bucket=channel_bucket(channels))
    g.add_edges_from(edges)
    return g


def assert_graph(g: nx.DiGraph, spec, edges):
    got = [(d["label"], d["stride"], d["channels"]) for _, d in sorted(g.nodes(data=True))]
    assert got == list(spec), graph_summary(g)
    assert sorted(g.edges) == sorted(edges), graph_summary(g)


class Tiny(nn.Module):
    """Every collapse rule a CNN meets: conv-BN-act, depthwise-separable, residual, pooled gate, resize, concat,
    and a dead branch."""

    def __init__(self):
        super().__init__()
        self.stem = ConvBNAct(3, 16, 3, stride=2)
        self.sep = nn.Sequential(ConvBNAct(16, 16, 3, groups=16), ConvBNAct(16, 32, 1))
        self.down = ConvBNAct(32, 64, 3, stride=2)
        self.conv1 = ConvBNAct(64, 64, 3)
        self.conv2 = ConvBNAct(64, 64, 3, dilation=2, act=None)
        self.gate = nn.Conv2d(64, 64, 1)
        self.unused = nn.Conv2d(64, 8, 1)
        self.head = nn.Conv2d(96, 5, 1)

    def forward(self, x):
        low = self.sep(self.stem(x))
        y = self.down(low)
        y = F.relu(y + self.conv2(self.conv1(y)))
        self.unused(y)  # does not reach the output: pruned
        y = y * torch.sigmoid(self.gate(F.adaptive_avg_pool2d(y, 1)))
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([y, low], dim=1))


# ---------------------------------------------------------------------------- model graphs
def test_tiny_module_graph_matches_hand_written():
    g = model_graph(Tiny(), (1, 3, 32, 32))
    spec = [
        ("conv-k3", 2, 16),   # 0 stem: conv + BN + ReLU
        ("dw-conv", 2, 32),   # 1 depthwise 3x3 + pointwise 1x1
        ("conv-k3", 4, 64),   # 2 down
        ("conv-k3", 4, 64),   # 3 conv1
        ("dilated", 4, 64),   # 4 conv2
        ("merge", 4, 64),     # 5 residual add (+ ReLU)
        ("pooling", 4, 64),   # 6 global pool: keeps the stride of the map it pools
        ("conv-k1", 4, 64),   # 7 gate conv on the pooled map (+ sigmoid)
        ("merge", 4, 64),     # 8 gating product
        ("resize", 2, 64),    # 9 upsample to the low-level map
        ("merge", 2, 96),     # 10 concat
        ("conv-k1", 2, 5),    # 11 classifier
    ]
    edges = [(0, 1), (1, 2), (2, 3), (3, 4), (2, 5), (4, 5), (5, 6), (6, 7), (5, 8), (7, 8), (8, 9), (9, 10),
             (1, 10), (10, 11)]
    assert_graph(g, spec, edges)
    assert g.nodes[6]["pooled"] and g.nodes[7]["pooled"] and not g.nodes[8]["pooled"]
    assert g.nodes[3]["name"] == "conv1.0" and g.nodes[1]["name"] == "sep"  # the conv module; BN, act folded
    assert all(d["stage"] == 0 for _, d in g.nodes(data=True))  # strides 2 and 4 are stage 0
    assert [round(g.nodes[n]["depth"], 4) for n in (0, 11)] == [round(0.5 / 12, 4), round(11.5 / 12, 4)]


def test_zoo_fcn_resnet18_graph_matches_hand_written():
    g = model_graph(build_model("fcn_resnet18", 11, width_mult=0.25), (1, 3, 64, 64))
    spec = [("conv-k5+", 2, 16), ("pooling", 4, 16)]  # 7x7 stem conv, max-pool
    edges = [(0, 1)]

    def block(convs, downsample=None):
        """Convs of a residual block in execution order (the downsample runs first), then its merge."""
        start, x = len(spec), len(spec) - 1  # x: the block input (the previous merge / the pool)
        if downsample:
            spec.append(downsample)
        for k, conv in enumerate(convs):
            spec.append(conv)
            edges.append((x if k == 0 else len(spec) - 2, len(spec) - 1))
        spec.append(("merge",) + convs[-1][1:])
        edges.extend([(start if downsample else x, len(spec) - 1), (len(spec) - 2, len(spec) - 1)])
        if downsample:
            edges.append((x, start))

    k3, dil = "conv-k3", "dilated"
    block([(k3, 4, 16), (k3, 4, 16)])
    block([(k3, 4, 16), (k3, 4, 16)])
    block([(k3, 8, 32), (k3, 8, 32)], downsample=("conv-k1", 8, 32))  # layer2: stride 2
    block([(k3, 8, 32), (k3, 8, 32)])
    block([(k3, 8, 64), (dil, 8, 64)], downsample=("conv-k1", 8, 64))  # layer3: dilated 2 (first conv: 1)
    block([(dil, 8, 64), (dil, 8, 64)])
    block([(dil, 8, 128), (dil, 8, 128)], downsample=("conv-k1", 8, 128))  # layer4: dilated 4 (first: 2)
    block([(dil, 8, 128), (dil, 8, 128)])
    spec += [("conv-k3", 8, 32), ("conv-k1", 8, 11)]  # FCN head: 3x3 conv to in/4, classifier
    edges += [(len(spec) - 3, len(spec) - 2), (len(spec) - 2, len(spec) - 1)]
    assert len(spec) == 31
    assert_graph(g, spec, edges)
    assert nx.utils.graphs_equal(g, model_graph(build_model("fcn_resnet18", 11, width_mult=0.25), (1, 3, 64, 64)))


def test_nominal_stages_put_dilated_stages_where_striding_would():
    """search.ged_stages=nominal: stride x the dilation that replaced striding, inherited down the map until an
    upsampling; an output-stride-8 FCN's layer3 lands in stage 2 and layer4 (+ head) in stage 3."""
    g = graph_from([("conv-k3", 8, 64), ("dilated", 8, 64), ("conv-k3", 8, 64), ("resize", 4, 64), ("conv-k1", 4, 8)],
                   [(0, 1), (1, 2), (2, 3), (3, 4)])
    g.nodes[1]["dilation"] = 2
    assert nominal_strides(g) == {0: 8, 1: 16, 2: 16, 3: 4, 4: 4}  # the upsampling resets it
    assert [v[0] for _, v in sorted(node_positions(g, stages="nominal").items())] == [1, 2, 2, 0, 0]
    assert [v[0] for _, v in sorted(node_positions(g).items())] == [1, 1, 1, 0, 0]  # by stride (the default)
    with pytest.raises(ValueError, match="stages"):
        node_positions(g, stages="depth")
    model = build_model("fcn_resnet18", 11, width_mult=0.25)
    by_stride = model_graph(model, (1, 3, 64, 64))
    nominal = model_graph(model, (1, 3, 64, 64), stages="nominal")
    assert [d["stage"] for _, d in sorted(by_stride.nodes(data=True))] == [0] * 8 + [1] * 23
    # stem..layer1 | layer2, layer3's downsample and first conv (dilation 1) | layer3's dilated rest, layer4's
    # downsample and first conv (dilation 2) | layer4's dilation-4 convs and the head
    assert [d["stage"] for _, d in sorted(nominal.nodes(data=True))] == [0] * 8 + [1] * 9 + [2] * 7 + [3] * 7
    assert [d["dilation"] for _, d in sorted(nominal.nodes(data=True))][15:18] == [1, 1, 2]
    plain = build_model("segformer_mitb0", 11, width_mult=0.5)  # no dilation: the same graph either way
    a, b = model_graph(plain, (1, 3, 64, 64)), model_graph(plain, (1, 3, 64, 64), stages="nominal")
    assert all(d["dilation"] == 1 for _, d in a.nodes(data=True)) and nx.utils.graphs_equal(a, b)


def test_mobilenet_and_segformer_collapse_to_blocks():
    g = model_graph(build_model("lraspp_mobilenetv2", 11, width_mult=0.25), (1, 3, 64, 64))
    labels = [d["label"] for _, d in sorted(g.nodes(data=True))]
    assert labels.count("mbconv") == 16  # features[2..17]: expand + depthwise + projection, one node each
    assert labels[:3] == ["conv-k3", "dw-conv", "merge"]  # stem, features[1] (t = 1: no expand), its residual
    assert "attention" not in labels and labels[-1] == "merge"  # LR-ASPP sums the two classifiers
    g = model_graph(build_model("segformer_mitb0", 11, width_mult=0.5), (1, 3, 64, 64))
    labels = [d["label"] for _, d in sorted(g.nodes(data=True))]
    assert labels.count("attention") == 8 and labels.count("mlp") == 8  # 2 blocks x 4 stages
    assert labels.count("linear") == 4 and labels.count("resize") == 3  # head: per-stage linears, upsampling
    strides = sorted({d["stride"] for _, d in g.nodes(data=True) if d["label"] == "attention"})
    assert strides == [4, 8, 16, 32]  # spatial-reduction convs are absorbed, not counted as the stride


def test_summary_and_draw_graph(tmp_path):
    g = model_graph(Tiny(), (1, 3, 32, 32))
    text = graph_summary(g)
    assert text.splitlines()[0].startswith("Tiny: 12 nodes, 14 edges") and "merge x3" in text
    path = draw_graph(g, tmp_path / "tiny.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


# ---------------------------------------------------------------------------- labels, positions, soft graphs
def test_op_labels_stages_and_buckets():
    table = {"skip": ABSENT, "none": ABSENT, "conv_3x3": "conv-k3", "conv1x1": "conv-k1", "conv_5x5": "conv-k5+",
             "dwsep_3x3": "dw-conv", "dwsep_5x5": "dw-conv", "mbconv_k3_e3": "mbconv", "mbconv_k5_e6": "mbconv",
             "dilconv_3x3_d2": "dilated", "zoomconv_3x3": "conv-k3", "attention": "attention"}
    assert {k: op_label(k) for k in table} == table
    assert op_label("skip", projects=True) == "conv-k1"
    with pytest.raises(ValueError, match="unknown op name"):
        op_label("warp_drive")
    assert [stage_of(s) for s in (1, 2, 4, 8, 16, 32, 64)] == [0, 0, 0, 1, 2, 3, 3]
    assert [channel_bucket(c) for c in (1, 16, 31, 32, 1280)] == [0, 4, 4, 5, 10]


def test_soft_layer_with_widths():
    sg = SoftGraph()
    ops = torch.tensor([0.5, 0.3, 0.2])
    i = sg.add_layer(["skip", "conv_3x3", "mbconv_k3_e6"], ops, stride=8, channels=[16, 32],
                     width_probs=torch.tensor([0.25, 0.75]), depth=0.5)
    node = sg.nodes[i]
    assert node.labels == [ABSENT, ABSENT, "conv-k3", "conv-k3", "mbconv", "mbconv"]
    assert node.buckets == [4, 5, 4, 5, 4, 5] and node.stage == 1
    assert torch.allclose(node.probs, torch.tensor([0.125, 0.375, 0.075, 0.225, 0.05, 0.15]))
    assert float(node.presence()) == pytest.approx(0.5)
    assert sorted(sg.to_graph().nodes) == []  # skip wins: the layer is removed
    assert sg.to_graph(choice=[5]).nodes[0]["label"] == "mbconv"


# ---------------------------------------------------------------------------- exact GED
def path3():
    return graph_from([("conv-k3", 4, 32), ("conv-k3", 8, 64), ("conv-k1", 8, 64)], [(0, 1), (1, 2)])


@pytest.mark.parametrize("change, expected", [
    (lambda g: g.nodes[1].update(label="dw-conv"), 1.0),          # one substitution, type differs
    (lambda g: g.nodes[1].update(stride=16), 0.5),                # same type, stride differs
    (lambda g: g.nodes[1].update(bucket=7), 0.25),                # same type, bucket differs
    (lambda g: g.nodes[1].update(stride=16, bucket=7), 0.75),
    (lambda g: (g.add_node(3, label="resize", stride=4, bucket=6), g.add_edge(2, 3)), 2.0),  # node + its edge
    (lambda g: g.add_edge(0, 2), 1.0),                             # one edge
    (lambda g: g.remove_edge(1, 2), 1.0),
])
def test_exact_ged_hand_computed(change, expected):
    g1, g2 = path3(), path3()
    change(g2)
    for a, b in ((g1, g2), (g2, g1)):
        r = exact_ged(a, b, timeout=20)
        assert r.exact and r.value == pytest.approx(expected)
        assert exact_ged(a, b, timeout=20, normalize=True).value == pytest.approx(expected / graph_size(b))
        assert correspondence_ged(a, b) >= r.value - 1e-9
    assert exact_ged(g1, path3()).value == 0.0


def test_family_cost_makes_related_labels_cheaper():
    """search.ged_family_cost: different labels of one family cost ``family`` + stride/bucket terms; other pairs 1."""
    fam = EditCosts(family=0.4)
    conv3, mb = {"label": "conv-k3", "stride": 8, "bucket": 6}, {"label": "mbconv", "stride": 8, "bucket": 6}
    assert DEFAULT_COSTS.node_subst(conv3, mb) == 1.0 and fam.node_subst(conv3, mb) == pytest.approx(0.4)
    assert fam.node_subst(conv3, {**mb, "stride": 16}) == pytest.approx(0.9)
    assert fam.node_subst(conv3, {**mb, "stride": 16, "bucket": 7}) == 1.0  # capped
    assert fam.node_subst(conv3, {**conv3, "label": "pooling"}) == 1.0  # another family
    assert fam.node_subst({"label": "attention"}, {"label": "mlp"}) == pytest.approx(0.4)
    g1, g2 = path3(), path3()
    g2.nodes[1]["label"] = "dw-conv"
    assert exact_ged(g1, g2, timeout=20, costs=fam).value == pytest.approx(0.4)
    t = teacher4()  # expected GED at one-hot still equals the correspondence GED under the same costs
    for choice in ((0, 0, 0), (1, 1, 1), (1, 2, 0)):
        sg = soft3([F.one_hot(torch.tensor(c), 3).float() for c in choice], (1.0, 1.0, 0.0))
        assert float(expected_ged(sg, t, costs=fam)) == pytest.approx(
            correspondence_ged(sg.to_graph(), t, normalize=True, costs=fam), abs=1e-6)


def test_exact_ged_timeout_gives_upper_bound():
    n = 12
    g1 = graph_from([("conv-k3", 4, 32)] * n, [(i, i + 1) for i in range(n - 1)])
    g2 = g1.copy()
    g2.add_edges_from([(0, n - 1), (1, n - 3), (2, n - 2)])
    # true GED 3: three edge insertions do it, and every edit changes the edge count by at most one
    r = exact_ged(g1, g2, timeout=1e-6)
    assert not r.exact and r.value >= 3.0
    full = exact_ged(g1, g2, timeout=60)
    assert full.exact and full.value == 3.0


# ---------------------------------------------------------------------------- correspondence and expected GED
def teacher4():
    return graph_from([("conv-k3", 4, 32), ("conv-k3", 4, 32), ("dw-conv", 8, 64), ("conv-k1", 8, 16)],
                      [(0, 1), (1, 2), (2, 3), (0, 2)])


def soft3(probs, edge_probs):
    """Three searchable nodes: two at stride 4 (slots 0, 1 of 2), one at stride 8; candidates conv-k3 / dw-conv /
    absent (stride-8 node: dw-conv / conv-k1 / absent); edges 0->1, 1->2, 0->2."""
    sg = SoftGraph()
    sg.add_node(["conv-k3", "dw-conv", ABSENT], probs[0], strides=4, buckets=5, depth=slot_depth(0, 2))
    sg.add_node(["conv-k3", "dw-conv", ABSENT], probs[1], strides=4, buckets=[5, 6, 5], depth=slot_depth(1, 2))
    sg.add_node(["dw-conv", "conv-k1", ABSENT], probs[2], strides=8, buckets=6, depth=slot_depth(0, 1))
    for (u, v), p in zip([(0, 1), (1, 2), (0, 2)], edge_probs):
        sg.add_edge(u, v, p)
    return sg


def test_correspondence_rule():
    t = teacher4()
    s = graph_from([("conv-k3", 4, 32), ("conv-k3", 4, 32), ("conv-k3", 4, 32), ("dw-conv", 16, 64)],
                   [(0, 1), (1, 2), (2, 3)])
    # stride 4: student depths 1/6, 1/2, 5/6 vs teacher 1/4, 3/4 -> 0 and 1 prefer t0 (0 wins), 2 prefers t1;
    # the stride-16 node has no teacher stage and is deleted; teacher nodes 2, 3 are inserted
    assert correspondence(s, t) == {0: 0, 2: 1}
    cost = edit_path_cost(s, t, {0: 0, 2: 1})
    assert cost == (2 + 2) + (3 - 0 + 4 - 0)  # nodes: 2 deleted, 2 inserted; no student edge maps to a teacher edge
    assert correspondence_ged(s, t) == cost and correspondence_ged(s, t, normalize=True) == cost / 8


def test_expected_ged_at_one_hot_equals_correspondence_and_bounds_exact():
    t = teacher4()
    for choice in itertools.product(range(3), repeat=3):
        for edges in itertools.product((0.0, 1.0), repeat=3):
            probs = [F.one_hot(torch.tensor(c), 3).float() for c in choice]
            sg = soft3(probs, edges)
            g = sg.to_graph()
            corr = correspondence_ged(g, t, normalize=True)
            assert float(expected_ged(sg, t)) == pytest.approx(corr, abs=1e-6)
            if choice in ((0, 0, 0), (1, 2, 1), (2, 1, 0)):
                ex = exact_ged(g, t, timeout=20, normalize=True)
                assert ex.exact and corr >= ex.value - 1e-9


def test_expected_ged_is_the_expectation_over_architectures():
    """At soft probabilities: the probability-weighted mean of correspondence_ged over every discrete outcome
    (a candidate per node, each edge kept or not), enumerated."""
    t = teacher4()
    probs = [torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.1, 0.6, 0.3]), torch.tensor([0.2, 0.3, 0.5])]
    edge_probs = [0.7, 0.4, 0.9]
    sg = soft3(probs, edge_probs)
    total = 0.0
    for choice in itertools.product(range(3), repeat=3):
        for kept in itertools.product((0, 1), repeat=3):
            w = float(torch.prod(torch.stack([probs[i][c] for i, c in enumerate(choice)])))
            for k, p in zip(kept, edge_probs):
                w *= p if k else 1 - p
            g = soft3([F.one_hot(torch.tensor(c), 3).float() for c in choice], [float(k) for k in kept]).to_graph()
            total += w * correspondence_ged(g, t, normalize=True)
    assert float(expected_ged(sg, t)) == pytest.approx(total, abs=1e-5)


def test_expected_ged_gradients_and_descent():
    t = teacher4()
    alpha = torch.zeros(3, 3, requires_grad=True)
    beta = torch.zeros(3, requires_grad=True)
    start = None
    for _ in range(40):  # plain gradient descent on the architecture logits
        a = F.softmax(alpha, dim=-1)
        loss = expected_ged(soft3([a[0], a[1], a[2]], torch.sigmoid(beta)), t)
        start = float(loss.detach()) if start is None else start
        loss.backward()
        assert alpha.grad is not None and torch.isfinite(alpha.grad).all() and alpha.grad.abs().sum() > 0
        assert beta.grad is not None and beta.grad.abs().sum() > 0
        with torch.no_grad():
            for p in (alpha, beta):
                p -= 20.0 * p.grad
                p.grad = None
    a = F.softmax(alpha, dim=-1).detach()
    final = soft3([a[0], a[1], a[2]], torch.sigmoid(beta).detach())
    assert float(expected_ged(final, t)) < start
    g = final.to_graph()  # the argmax architecture copies what the teacher has at these positions
    assert [g.nodes[i]["label"] for i in sorted(g.nodes)] == ["conv-k3", "conv-k3", "dw-conv"]
    assert sorted(g.edges) == [(0, 1), (0, 2), (1, 2)]
    assert correspondence_ged(g, t) == DEFAULT_COSTS.node_indel + DEFAULT_COSTS.edge_indel  # t3 and 2->3 inserted


# ---------------------------------------------------------------------------- the chain supernet's soft graph
def _one_hot_logits(net, gen: torch.Generator, skip_bias: float) -> None:
    """Set every architecture logit vector of ``net`` to a random one-hot choice (skip drawn with ``skip_bias``)."""
    with torch.no_grad():
        for name, p in net.named_arch_parameters():
            pick = int(torch.randint(len(p), (), generator=gen))
            if name.startswith("alpha.") and float(torch.rand((), generator=gen)) < skip_bias:
                pick = 0  # LAYER_OPS[0] is skip
            p.fill_(-40.0)
            p[pick] = 40.0


def test_chain_soft_graph_at_one_hot_is_the_derived_network():
    """search.expectation=derived: at one-hot weights the soft graph is the traced derived network's graph (skipped
    layers' readers rewired, unread layers removed, MBConv merges), so the structural term prices the network the
    search returns; the supernet's own wiring ("supernet") is not, and its expected GED still meets the
    correspondence GED of its own one-hot graph."""
    from segdistill.search import space_chain
    from segdistill.search.genotype import derive
    from segdistill.search.objective import soft_graph

    assert space_chain.LAYER_OPS[0] == "skip"
    net = build_model("chain_supernet", 5, base_widths=[24, 32, 48], stem_widths=[8, 16], head_channels=16)
    t = model_graph(build_model("fcn_resnet18", 5).eval(), (1, 3, 64, 64))
    same = lambda a, b: all(a[k] == b[k] for k in ("label", "stride", "bucket"))  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    layers_iso = []
    for trial in range(12):
        _one_hot_logits(net, gen, skip_bias=0.5 if trial % 2 else 0.0)
        traced = model_graph(build_model("searched", 5, genotype=derive(net)).eval(), (1, 3, 64, 64))
        for graph in ("derived", "supernet"):
            sg = soft_graph(net, graph)
            g = sg.to_graph()
            value = float(expected_ged(sg, t).detach())
            assert value == pytest.approx(correspondence_ged(g, t, normalize=True), abs=1e-6)
            if graph == "derived":
                assert nx.is_isomorphic(traced, g, node_match=same), (trial, graph_summary(traced), graph_summary(g))
            else:
                layers_iso.append(nx.is_isomorphic(traced, g, node_match=same))
    assert not all(layers_iso)  # the old wiring drops the edges of removed layers' readers


def test_chain_soft_graph_derived_is_differentiable():
    from segdistill.search.objective import soft_graph

    net = build_model("chain_supernet", 5, base_widths=[24, 32, 48], stem_widths=[8, 16], head_channels=16)
    t = model_graph(build_model("fcn_resnet18", 5).eval(), (1, 3, 64, 64))
    value = expected_ged(soft_graph(net), t)  # the supernet's own default: derived
    value.backward()
    grads = {n: p.grad for n, p in net.named_arch_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for n, g in grads.items() if not n.startswith("width"))
    assert all(grads[f"beta.{j}"].abs().sum() > 0 for j in (1, 2, 3))  # beta reaches the rewired edges
    with pytest.raises(Exception, match="search.expectation"):
        soft_graph(net, "wiring")
