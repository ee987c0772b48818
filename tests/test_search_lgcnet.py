"""The LGCNet space (issue 11, segdistill/search/space_lgcnet.py, ggm.py): library keys of every candidate, expected
latency against a hand sum, the GCN-guided module in isolation, cell sharing, fusion on/off, a 2-iteration search
(and its exact resume), derived genotypes (build, train a step, JSON round trip, no GGM, ONNX).

Tiny on purpose: 1x3x48x64 inputs, 2 nodes per cell, narrow widths, fake latency tables; nothing is timed.
"""
from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
import torch
from test_search_hook import search_cfg
from test_search_space import fake_predictor

from segdistill.config import Config
from segdistill.engine.checkpoint import build_from_checkpoint, load_checkpoint
from segdistill.engine.hooks import build_hooks
from segdistill.engine.trainer import Trainer
from segdistill.errors import ConfigError
from segdistill.latency import standalone as core
from segdistill.latency.spaces import build_space
from segdistill.latency.standalone import BlockKey
from segdistill.models import build_model, count_parameters
from segdistill.search.genotype import derive, genotype_netspec, load_genotype, save_genotype
from segdistill.search.ggm import GCNGuidedModule
from segdistill.search.objective import soft_graph
from segdistill.search.space_lgcnet import (
    CELL_OPS,
    FUSION_OPS,
    LEVEL_STRIDES,
    LEVELS,
    LgcSpace,
    LgcSupernet,
    cell_edges,
    kept_probs,
    report_rows,
)

SHAPE = (1, 3, 48, 64)
K = 8
TINY = dict(stem_widths=(8, 8), base_widths=(16, 24, 32), nodes=2, head_channels=16)
OPTS = dict(input=list(SHAPE), nodes=2, base_widths=[16, 24, 32], stem_widths=[8, 8], head_channels=16)
PUBLISHED = dict(share_cells=False, ggm_gamma=0.5, fusion=True)  # LGCNet as published (the config defaults: off)


@pytest.fixture(autouse=True)
def one_thread():
    with core.torch_threads(1):
        yield


def tiny(seed=0, fusion=True, **kw) -> LgcSupernet:
    torch.manual_seed(seed)
    return LgcSupernet(LgcSpace(SHAPE, K, fusion=fusion, **TINY), **kw)


def set_one_hot(net: LgcSupernet, rng) -> None:
    """Sharp logits: per node two random inputs with a random non-none op, the others ``none``; per fusion level a
    random op (``none`` allowed, at least one level kept)."""
    with torch.no_grad():
        for a in net.alpha:
            a.fill_(-30.0)
            for i in range(net.space.nodes):
                rows = [e for e, (n, _) in enumerate(cell_edges(net.space.nodes)) if n == i]
                keep = rng.choice(rows, size=2, replace=False)
                for e in rows:
                    a[e, int(rng.integers(1, len(CELL_OPS))) if e in keep else 0] = 30.0
        if net.alpha_fusion is not None:
            net.alpha_fusion.fill_(-30.0)
            ops = [int(rng.integers(len(FUSION_OPS))) for _ in LEVELS]
            ops[int(rng.integers(4))] = int(rng.integers(1, len(FUSION_OPS)))
            for lv, o in enumerate(ops):
                net.alpha_fusion[lv, o] = 30.0


def test_every_candidate_is_a_library_block_matching_its_key():
    sp = LgcSpace(SHAPE, K, **TINY)
    keys = sp.keys()
    assert len(keys) == len(set(keys))
    for key in keys:
        bk = BlockKey.parse(key)
        module = core.build_block(bk)
        xs = core.example_inputs(bk.input_shapes())
        assert tuple(module(*xs).shape[1:]) == bk.out_shape(), key
    net = tiny()
    assert set(net.keys()) == set(keys)
    assert build_space("lgcnet", SHAPE, K).keys() == LgcSpace(SHAPE, K).keys()  # `lut build --space lgcnet`


@pytest.mark.parametrize("fusion", [True, False])
def test_expected_latency_is_the_hand_sum_at_one_hot_weights(fusion):
    net = tiny(fusion=fusion, ggm_gamma=0)
    sp = net.space
    predictor, values = fake_predictor(net.keys(), correction={"model": "linear", "coef": {"raw": 2.0, "const": 0.5}})
    rng = np.random.default_rng(0)
    for _ in range(3):
        set_one_hot(net, rng)
        g = derive(net)
        assert all(len(n["inputs"]) == 2 for c in g["cells"] for n in c["nodes"])
        spec = genotype_netspec(g, SHAPE, K)
        hand = sum(values[n.key] for n in spec.nodes)
        hand -= values[str(sp.head_keys()["add"])] * (len(g["fusion_edges"]) - 1) if fusion else 0
        assert net.expected_latency(predictor, correction=None).item() == pytest.approx(hand, rel=1e-5)
        assert net.expected_latency(predictor).item() == pytest.approx(2 * hand + 0.5, rel=1e-5)
        if fusion:  # the kept fusion edges are the non-none argmaxes
            kept = [LEVELS[lv] for lv in range(4) if int(net.alpha_fusion[lv].argmax()) != 0]
            assert [e["level"] for e in g["fusion_edges"]] == kept
    e = net.expected_latency(predictor)
    net.zero_grad()
    with torch.no_grad():
        for a in net.arch_parameters():
            a.zero_()
    net.expected_latency(predictor).backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in net.alpha)
    assert net.largest_latency(predictor) >= e.item() >= net.smallest_latency(predictor) > 0


def test_kept_probs_are_top_two_inclusion_probabilities():
    """Plackett-Luce top-2 inclusion: against sampling without replacement, sums, bounds, the indicator case."""
    torch.manual_seed(0)
    w = torch.tensor([0.5, 0.3, 0.15, 0.05])
    got = kept_probs(w, 2)
    draws = torch.stack([torch.multinomial(w, 2, replacement=False) for _ in range(20000)])
    freq = torch.stack([(draws == e).any(1).float().mean() for e in range(4)])
    assert torch.allclose(got, freq, atol=0.015)
    assert float(got.sum()) == pytest.approx(2.0) and float(got.max()) <= 1.0
    assert kept_probs(torch.tensor([0.0, 0.9, 0.0, 0.7]), 2).tolist() == pytest.approx([0, 1, 0, 1], abs=1e-6)
    assert kept_probs(torch.tensor([0.2, 0.6]), 2).tolist() == [1.0, 1.0]
    assert kept_probs(w, 1).tolist() == pytest.approx((w / w.sum()).tolist())
    with pytest.raises(ConfigError, match="top_k"):
        kept_probs(w, 3)


def test_derived_expectation_counts_the_kept_edges_only():
    """search.expectation=derived: per node the edges' kept mass is 2 x the cell's probability of being computed
    (a later fusion level kept) at any weights, so none cannot shrink a cell; at one-hot weights it is the
    supernet's softmax (every cell computed); the latency term no longer favours none."""
    net = tiny(ggm_gamma=0)
    torch.manual_seed(1)
    with torch.no_grad():
        for a in net.alpha:
            a.copy_(torch.randn_like(a))
    edges = cell_edges(net.space.nodes)
    live = [v.detach() for v in net.cell_live()]
    assert all(0 < float(v) < 1 for v in live) and float(live[0]) > float(live[1]) > float(live[2])
    for q, v in zip(net.edge_probs("derived"), live):
        assert torch.allclose(q.sum(-1), torch.ones(len(edges)))
        for i in range(net.space.nodes):  # a computed cell's node keeps 2 inputs
            rows = [e for e, (n, _) in enumerate(edges) if n == i]
            kept = float((1 - q[rows, 0]).sum().detach())  # CELL_OPS[0]: none
            assert kept == pytest.approx(2.0 * float(v), abs=1e-5)
    set_one_hot(net, np.random.default_rng(3))
    with torch.no_grad():  # the stride-32 level kept: every cell computed
        net.alpha_fusion[3].fill_(-30.0)
        net.alpha_fusion[3, 1] = 30.0
    for q, p in zip(net.edge_probs("derived"), net.edge_probs("supernet")):
        assert torch.allclose(q, p, atol=1e-6)
    predictor, _ = fake_predictor(net.keys())
    with torch.no_grad():
        for a in net.alpha:
            a.zero_()
    grads = {}
    for mode in ("supernet", "derived"):
        net.expectation = mode
        for a in net.alpha:
            a.grad = None
        net.expected_latency(predictor).backward()
        grads[mode] = torch.stack([a.grad[:, 0] for a in net.alpha])  # d latency / d none logit
    assert float(grads["supernet"].max()) < 0  # the old expectation: every none logit lowers latency
    assert float(grads["derived"].abs().max()) < float(grads["supernet"].abs().max())
    with pytest.raises(ConfigError, match="search.expectation"):
        net.edge_probs("wiring")


@pytest.mark.parametrize("fusion", [True, False])
def test_derived_soft_graph_at_one_hot_is_the_derived_network(fusion):
    """search.expectation=derived: at one-hot weights the soft graph is the traced derived network's graph (kept
    edges, MBConv residual merges, identities as edges, the fusion's strides, resizes and chained sums, cells no
    kept level reads left out). The ops reading x0 are plain convolutions here: after the pre 1x1 conv, a
    depthwise-first op is folded by the tracer into one MBConv-like node, which no soft graph reproduces."""
    from segdistill.search.graph import model_graph

    net = tiny(fusion=fusion, ggm_gamma=0)
    rng = np.random.default_rng(0)
    plain = [CELL_OPS.index(o) for o in ("conv_3x3", "dilconv_3x3_d2", "zoomconv_3x3")]
    same = lambda a, b: all(a[k] == b[k] for k in ("label", "stride", "bucket"))  # noqa: E731
    old = []
    for _ in range(8):
        set_one_hot(net, rng)
        with torch.no_grad():
            for a in net.alpha:
                for e, (_, src) in enumerate(cell_edges(net.space.nodes)):
                    if src == 0 and int(a[e].argmax()) != 0:
                        a[e].fill_(-30.0)
                        a[e, int(rng.choice(plain))] = 30.0
        traced = model_graph(build_model("searched", K, genotype=derive(net)).eval(), SHAPE)
        assert nx.is_isomorphic(traced, soft_graph(net, "derived").to_graph(), node_match=same)
        old.append(nx.is_isomorphic(traced, soft_graph(net, "supernet").to_graph(), node_match=same))
    assert not all(old)


def test_cells_no_fusion_level_reads_are_left_out(tmp_path):
    """A derived network whose fusion cell reads stage2 only computes cell 1 alone: fewer blocks in its latency
    spec, no parameters or features of the cells after it (except cell 2 for the training-only aux head), and the
    supernet's expected latency at those one-hot weights is that spec's sum (the dead cells' pre and add blocks
    included in the weighting)."""
    from segdistill.search.space_lgcnet import live_cells

    net = tiny(ggm_gamma=0)
    set_one_hot(net, np.random.default_rng(5))
    with torch.no_grad():
        net.alpha_fusion.fill_(-30.0)
        net.alpha_fusion[:, 0] = 30.0  # none everywhere ...
        net.alpha_fusion[1, 0], net.alpha_fusion[1, 3] = -30.0, 30.0  # ... but stage2: dwsep_3x3
    g = derive(net)
    assert [e["level"] for e in g["fusion_edges"]] == ["stage2"] and live_cells(g) == 1
    full = dict(g, fusion_edges=[*g["fusion_edges"], {"level": "stage4", "op": "conv_3x3"}])
    assert live_cells(full) == 3
    spec, spec_full = genotype_netspec(g, SHAPE, K), genotype_netspec(full, SHAPE, K)
    assert len(spec.nodes) < len(spec_full.nodes) - 2 * (1 + 2 * net.space.nodes)
    predictor, values = fake_predictor(net.keys())
    hand = sum(values[n.key] for n in spec.nodes)
    assert net.expected_latency(predictor, correction=None).item() == pytest.approx(hand, rel=1e-5)
    model = build_model("searched", K, genotype=g)
    assert len(model.cells) == 1 and "stage3" not in model.feature_channels and "stage4" not in model.feature_channels
    model.eval()
    out = model(torch.randn(1, *SHAPE[1:]))
    assert out.logits.shape == (1, K, 6, 8) and "stage3" not in out.features
    aux = build_model("searched", K, genotype=g, aux=True)
    assert len(aux.cells) == 2 and aux.train()(torch.randn(2, *SHAPE[1:])).aux_logits is not None
    assert "stage3" not in aux.eval()(torch.randn(1, *SHAPE[1:])).features
    assert count_parameters(model) < count_parameters(build_model("searched", K, genotype=full))
    from segdistill.tools.export import export_onnx

    report = export_onnx(model, tmp_path / "pruned.onnx", SHAPE)
    assert report["ok"] and report["max_abs_diff"] < 1e-3


def test_ggm_in_isolation_shapes_gradients_and_gamma_zero():
    torch.manual_seed(0)
    E, n_ops = 9, 10
    prev, nxt = torch.randn(E, n_ops, requires_grad=True), torch.randn(E, n_ops, requires_grad=True)
    ggm = GCNGuidedModule(n_ops, hidden=8, gamma=0.5)
    A = ggm.adjacency(prev, nxt)
    assert A.shape == (E, E) and torch.allclose(A.sum(1), torch.ones(E))
    out = ggm(prev, nxt)
    assert out.shape == (E, n_ops) and not torch.equal(out, nxt)
    out.square().sum().backward()
    assert prev.grad.abs().sum() > 0 and nxt.grad.abs().sum() > 0  # both cells' alpha
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ggm.parameters())
    assert torch.equal(GCNGuidedModule(n_ops, gamma=0.0)(prev, nxt), nxt)  # gamma = 0: plain alpha
    assert GCNGuidedModule(n_ops, cross=False).adjacency(prev, nxt).shape == (E, E)


def test_ggm_in_the_supernet_and_gamma_zero_is_the_plain_search():
    on, off = tiny(ggm_gamma=0.5), tiny(ggm_gamma=0.0)
    assert [n for n, _ in on.named_arch_parameters() if n.startswith("ggm.")] and off.ggm is None
    x = torch.randn(2, *SHAPE[1:])
    on(x).logits.sum().backward()
    assert all(a.grad.abs().sum() > 0 for a in on.alpha) and all(p.grad is not None for p in on.ggm.parameters())
    assert all(a is b for a, b in zip(off.cell_alphas(), off.alpha))  # gamma = 0: each cell its own alpha, untouched
    eff = on.cell_alphas()
    assert eff[0] is on.alpha[0] and not torch.equal(eff[1], on.alpha[1])
    # search-time only: a derived network has no GGM (nor any architecture) parameter
    model = build_model("searched", K, genotype=on.derive())
    assert not any("ggm" in n or "alpha" in n for n, _ in model.named_parameters())
    assert {id(p) for p in on.arch_parameters()}.isdisjoint(id(p) for p in on.weight_parameters())


def test_share_cells_ties_alpha():
    net = tiny(share_cells=True, ggm_gamma=0)
    assert len(net.alpha) == 1 and all(a is net.alpha[0] for a in net.cell_alphas())
    g = derive(net)
    assert g["cells"][0] == g["cells"][1] == g["cells"][2]
    with pytest.raises(ConfigError, match="ggm_gamma=0"):
        tiny(share_cells=True, ggm_gamma=0.5)


def test_fusion_on_and_off():
    x = torch.randn(2, *SHAPE[1:])
    for fusion in (True, False):
        net = tiny(fusion=fusion)
        out = net(x)
        assert out.logits.shape == (2, K, 6, 8)
        assert list(out.features) == ["stem", "stage1", "stage2", "stage3", "stage4", "pre_logits"]
        assert {k: tuple(v.shape[1:2]) for k, v in out.features.items()} == {
            k: (c,) for k, c in net.feature_channels.items()}
        assert (net.alpha_fusion is not None) == fusion
        g = derive(net)
        assert g["fusion"] == fusion and bool(g["fusion_edges"]) == fusion
        sg = soft_graph(net)  # the structural term's graph (objective dispatches to the supernet's own)
        assert any(n.name.startswith("fusion.") for n in sg.nodes) == fusion
        assert build_model("searched", K, genotype=g)(x).logits.shape == (2, K, 6, 8)
    assert len(LgcSpace(SHAPE, K, **TINY).keys()) > len(LgcSpace(SHAPE, K, fusion=False, **TINY).keys())


def test_derived_genotype_builds_trains_round_trips_and_errors(tmp_path):
    net = tiny()
    g = derive(net)
    path = save_genotype(g, tmp_path / "genotype.json")
    assert load_genotype(path) == g == json.loads(path.read_text()) and g["space"] == "lgcnet"
    model = build_model(f"searched:{path}", K)
    assert model.arch_spec == {"genotype": g} and count_parameters(model) < count_parameters(net)
    again = build_model("searched", K, **model.arch_spec)
    assert again.state_dict().keys() == model.state_dict().keys()
    x, y = torch.randn(2, *SHAPE[1:]), torch.randint(0, K, (2, *SHAPE[2:]))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    logits = torch.nn.functional.interpolate(model(x).logits, size=SHAPE[2:], mode="bilinear", align_corners=False)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    spec = model.latency_netspec(SHAPE)
    assert all(core.BlockKey.parse(n.key) for n in spec.nodes)

    bad = dict(g, cells=[{"nodes": [{"inputs": [0, 7], "ops": ["conv_3x3", "warp"]}]}] * 3)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="bad.json.*cell 1 node 0: inputs.*ops must be"):
        load_genotype(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text(json.dumps(dict(g, fusion_edges=[])))
    with pytest.raises(ConfigError, match="bad2.json.*fusion_edges"):
        load_genotype(tmp_path / "bad2.json")


def lgcnet_cfg(tmp_path, **kw):
    lut = tmp_path / "lut.json"
    if not lut.exists():
        keys = LgcSpace(SHAPE, K, **TINY).keys() + LgcSpace(SHAPE, K, fusion=False, **TINY).keys()
        _, values = fake_predictor(list(dict.fromkeys(keys)))
        table = json.loads(json.dumps({"format": "segdistill-latency-table", "version": 1, "platform": "torch-cpu",
                                       "platform_info": {}, "threads": 1, "timing": {}, "device": core.machine_info(),
                                       "versions": {}, "date": "2026-12-01", "units": "ms", "built_for": [],
                                       "entries": {k: {"median_ms": v} for k, v in values.items()}}))
        lut.write_text(json.dumps(table))
    cfg = search_cfg(tmp_path, budget=60.0, **kw)
    cfg.search.space = "lgcnet"
    for k, v in {**OPTS, **PUBLISHED}.items():
        if k not in kw:
            setattr(cfg.search, k, v)
    return cfg


def test_the_config_defaults_switch_the_three_lgcnet_parts_off(tmp_path):
    """The CamVid ablation kept none of them (RESULTS.md): by default one shared alpha, no GGM, the fixed head."""
    cfg = lgcnet_cfg(tmp_path, **{k: getattr(Config().search, k) for k in PUBLISHED})
    assert (cfg.search.share_cells, cfg.search.ggm_gamma, cfg.search.fusion) == (True, 0.0, False)
    trainer = Trainer(cfg, build_hooks(cfg))
    net = trainer.model
    assert isinstance(net, LgcSupernet) and net.alpha_fusion is None
    assert [n for n, _ in net.named_arch_parameters()] == ["alpha.0"]
    trainer.train()
    g = load_genotype(tmp_path / "run" / "genotype.json")
    assert g["fusion"] is False and not g["fusion_edges"] and len(g["cells"]) == 3  # the price may differ per cell


def test_two_iteration_lgcnet_search_moves_alpha_and_writes_a_genotype(tmp_path):
    cfg = lgcnet_cfg(tmp_path)
    hooks = build_hooks(cfg)
    assert cfg.model.name == "lgcnet_supernet"
    trainer = Trainer(cfg, hooks)
    net = trainer.model
    assert isinstance(net, LgcSupernet)
    main_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not main_params & {id(p) for p in net.arch_parameters()}  # alpha and the GGM under the arch Adam
    before = {n: p.detach().clone() for n, p in net.named_arch_parameters()}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in net.named_arch_parameters() if n.startswith("alpha"))
    assert any(not torch.equal(before[n], p) for n, p in net.named_arch_parameters() if n.startswith("ggm"))
    out = tmp_path / "run"
    for name in ("genotype.json", "search_log.jsonl", "arch_000002.png", "report.md", "last.pt"):
        assert (out / name).is_file(), name
    g = load_genotype(out / "genotype.json")
    assert g["space"] == "lgcnet" and "Fusion cell" in (out / "report.md").read_text()
    model, meta = build_from_checkpoint(out / "last.pt")
    assert meta["model"]["name"] == "lgcnet_supernet" and isinstance(model, LgcSupernet)
    assert all(torch.equal(p, dict(net.named_arch_parameters())[n]) for n, p in model.named_arch_parameters())


@pytest.mark.slow
def test_lgcnet_search_resume_equals_a_search_never_stopped(tmp_path):
    from test_search_hook import StopAt

    def cfg_for(name):
        cfg = lgcnet_cfg(tmp_path, out=name, iters=4, band_interval=1)
        cfg.data.synthetic_train = 16
        cfg.train.val_interval = 10
        return cfg

    # a full run; a run stopped after iteration 2; that run resumed
    for name, extra, resume in (("full", [], None), ("cut", [StopAt(3)], None), ("cut", [], "auto")):
        cfg = cfg_for(name)
        cfg.train.resume = resume
        try:
            Trainer(cfg, build_hooks(cfg) + extra).train()
        except KeyboardInterrupt:
            assert extra
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    arch = [k for k in a["model"] if k.startswith(("alpha", "ggm"))]
    assert arch and all(torch.equal(a["model"][k], b["model"][k]) for k in arch)
    assert a["hooks"]["search"] == b["hooks"]["search"]


@pytest.mark.slow  # the ONNX exporter
def test_derived_lgcnet_network_exports_to_onnx(tmp_path):
    from segdistill.tools.export import export_onnx

    net = tiny()
    with torch.no_grad():  # make sure zoomed convs and strided skips are in the exported network
        net.alpha[0][:, CELL_OPS.index("zoomconv_3x3")] = 5.0
        net.alpha_fusion[:, FUSION_OPS.index("skip")] = 5.0
    g = derive(net)
    model = build_model("searched", K, genotype=g)
    report = export_onnx(model, tmp_path / "lgcnet.onnx", SHAPE)
    assert report["ok"] and report["max_abs_diff"] < 1e-3 and report["argmax_agreement"] > 0.99


def test_aux_skip_is_extra_skip_weight_on_the_edges_between_nodes():
    """DARTS-' auxiliary skip in a cell: b x input beside every edge from an intermediate node (those keep stride and
    width), the same as adding b to those edges' skip weight; the cell inputs' edges get none."""
    net = tiny().eval()
    feats = net._stem(torch.randn(*SHAPE))
    cell = net.cells[0]
    torch.manual_seed(2)
    w = torch.softmax(torch.randn(len(cell.edges_io), len(CELL_OPS)), -1)
    between = torch.tensor([float(src >= 2) for _, src in cell.edges_io])
    assert 0 < between.sum() < len(between)
    skip = torch.nn.functional.one_hot(torch.tensor(CELL_OPS.index("skip")), len(CELL_OPS)).float()
    with torch.no_grad():
        aux = cell(feats["stem"], feats["stage1"], w, aux_skip=0.3)
        same = cell(feats["stem"], feats["stage1"], w + 0.3 * between[:, None] * skip)
        plain = cell(feats["stem"], feats["stage1"], w)
    torch.testing.assert_close(aux, same)
    assert not torch.allclose(aux, plain)


def test_the_report_flags_a_fusion_cell_without_high_resolution_input():
    """The CamVid searches' fusion cells kept stage 4 only, and lost about 3 mIoU to the fixed head: the report says
    when the head reads nothing finer than stride 16."""
    net = tiny(ggm_gamma=0)
    set_one_hot(net, np.random.default_rng(5))
    g = derive(net)
    flag = "The head reads nothing finer than stride"
    for levels, flagged in ((["stage4"], True), (["stage3", "stage4"], True), (["stage2", "stage4"], False),
                            (["stage1"], False)):
        text = "\n".join(report_rows(dict(g, fusion_edges=[{"level": lv, "op": "skip"} for lv in levels])))
        assert (flag in text) == flagged, levels
        assert not flagged or f"stride {LEVEL_STRIDES[LEVELS.index(levels[0])]}" in text
    assert flag not in "\n".join(report_rows(dict(g, fusion=False, fusion_edges=[])))
