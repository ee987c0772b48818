"""The chain search space: library keys of every candidate, expected latency against a hand sum, the supernet's
forward/backward, derivation, genotype files, the ``searched`` model (training step, ONNX) and its errors.

Small on purpose (2 CPU cores): a 1x3x64x96 input, narrow widths, 3 layers per stage. Latency tables are fake
(made-up numbers per key); nothing is timed.
"""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from segdistill.cli import main
from segdistill.errors import ConfigError
from segdistill.latency import standalone as core
from segdistill.latency.lut import LatencyTable
from segdistill.latency.predictor import LatencyPredictor, apply_correction
from segdistill.latency.spaces import build_space
from segdistill.latency.standalone import BlockKey
from segdistill.models import SegOutput, build_model, count_parameters
from segdistill.search.genotype import DEFAULT_GENOTYPE, _resolve_stage, derive, genotype_netspec, load_genotype, save_genotype
from segdistill.search.space_chain import OPS, STAGE_NAMES, ChainSpace, ChainSupernet
from segdistill.tools.export import export_onnx

SHAPE = (1, 3, 64, 96)
SMALL = dict(stem_widths=(8, 8), base_widths=(16, 24, 32), width_ratios=(0.5, 1.0), layers=3, head_channels=16)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the shared CI cores run other work too, and these maps are tiny."""
    with core.torch_threads(1):
        yield


def small_supernet(seed: int = 0, num_classes: int = 5) -> ChainSupernet:
    torch.manual_seed(seed)
    return ChainSupernet(ChainSpace(SHAPE, num_classes, **SMALL))


def fake_predictor(keys, seed: int = 0, correction=None) -> tuple[LatencyPredictor, dict]:
    """A predictor over a table with made-up latencies per key (0 for free ones), on this machine."""
    rng = np.random.default_rng(seed)
    values = {k: 0.0 if core.is_free(k) else float(rng.uniform(0.1, 2.0)) for k in keys}
    table = {"format": "segdistill-latency-table", "version": 1, "platform": "torch-cpu", "platform_info": {},
             "threads": 1, "timing": {}, "device": core.machine_info(), "versions": {}, "date": "2026-12-01",
             "units": "ms", "built_for": [], "entries": {k: {"median_ms": v} for k, v in values.items()}}
    table = LatencyTable(table)
    table.correction = correction
    return LatencyPredictor(table, measure=False), values


def set_one_hot(net: ChainSupernet, rng: np.random.Generator, chain: bool = True) -> dict:
    """Sharp logits (+-30) for random choices; ``chain``: every layer reads its predecessor (all layers live).
    Returns the choices per stage: width index, down op index, layer op indices."""
    choices = []
    with torch.no_grad():
        for p in net.arch_parameters():
            p.fill_(-30.0)
        for s in range(3):
            lg = net.stage_logits(s)
            c = {"width": int(rng.integers(len(lg["width"]))), "down": int(rng.integers(len(lg["down"]))),
                 "ops": [int(rng.integers(len(a))) for a in lg["alpha"]]}
            lg["width"][c["width"]] = 30.0
            lg["down"][c["down"]] = 30.0
            for a, o, b in zip(lg["alpha"], c["ops"], lg["beta"]):
                a[o] = 30.0
                b[len(b) - 1 if chain else int(rng.integers(len(b)))] = 30.0
            choices.append(c)
    return choices


def test_every_candidate_is_a_library_block_with_its_keys_shape():
    space = ChainSpace(SHAPE, 5, **SMALL)
    keys = space.keys()
    # stem 2, head 5 fixed; per stage: strided (in widths x widths x 8 ops), layers (widths x 10 ops); head 1x1s
    # (minus one: the head's 3x3 refine conv, 16 -> 16 at stride 8, is also stage2's conv_3x3 at width 16)
    expected = 2 + 5 + (1 * 2 + 2 * 2 + 2 * 2) * 8 + 3 * 2 * 10 + 2 + 2 - 1
    assert len(keys) == len(set(keys)) == expected
    for text in keys:
        key = BlockKey.parse(text)
        core.validate_key(key)
        module, shapes = core.build_from_key(text)
        assert [tuple(s) for s in shapes] == key.input_shapes()
        with torch.no_grad():
            out = module(*core.example_inputs(shapes))
        assert tuple(out.shape[1:]) == key.out_shape(), text
    # the registry entry `lut build --space chain` uses, and the default space at the deployment size
    assert build_space("chain", SHAPE, 5).keys() == ChainSpace(SHAPE, 5).keys()
    default = ChainSpace()
    assert len(default.keys()) == 271 and all(core.validate_key(BlockKey.parse(k)) is None for k in default.keys())
    with pytest.raises(ConfigError, match="unknown"):
        ChainSpace(SHAPE, 5, layer_ops=("conv_3x3", "conv_9x9"))


def test_lut_blocks_lists_the_chain_space(tmp_path, capsys):
    out = tmp_path / "blocks.json"
    assert main(["lut", "blocks", "--space", "chain", "--input", "3x64x96", "--out", str(out)]) in (0, None)
    assert json.loads(out.read_text())["keys"] == ChainSpace(SHAPE, 11).keys()


def test_supernet_keys_are_the_keys_of_its_blocks():
    """Each mixed op's modules are the library blocks of the largest-width keys (same layer types, in order)."""
    net = small_supernet()
    sp = net.space
    for s, stage in enumerate(net.stages):
        c = sp.max_width(s)
        cin = [sp.stem_widths[1], sp.max_width(0), sp.max_width(1)][s]
        pairs = [(stage.down, sp.down_keys(s, cin, c))] + [(layer, sp.layer_keys(s, c)) for layer in stage.layers]
        for mixed, keys in pairs:
            for op, key in zip(mixed.ops, keys, strict=True):
                ref = core.build_block(key)
                assert [type(m).__name__ for m in op.modules()][1:] == [type(m).__name__ for m in ref.modules()][1:]


def test_expected_latency_is_the_hand_sum_at_one_hot_weights():
    net = small_supernet()
    sp = net.space
    corr = {"model": "linear", "coef": {"raw": 2.0, "const": 0.5}}
    predictor, values = fake_predictor(net.keys(), correction=corr)
    rng = np.random.default_rng(1)
    for trial in range(3):
        choices = set_one_hot(net, rng)
        widths = [sp.widths(s)[c["width"]] for s, c in enumerate(choices)]
        hand = sum(values[k] for k in sp.fixed_keys())
        for s, c in enumerate(choices):
            cin = sp.stem_widths[1] if s == 0 else widths[s - 1]
            hand += values[str(sp.down_keys(s, cin, widths[s])[c["down"]])]
            hand += sum(values[str(sp.layer_keys(s, widths[s])[o])] for o in c["ops"])
        head = sp.head_keys(widths[0], widths[2])
        hand += values[str(head["high"])] + values[str(head["low"])]
        e = net.expected_latency(predictor)
        assert e.item() == pytest.approx(2.0 * hand + 0.5, rel=1e-5)
        assert net.expected_latency(predictor, correction=None).item() == pytest.approx(hand, rel=1e-5)
        # the derived network (skip-won layers removed, free anyway) predicts the same
        spec = genotype_netspec(derive(net), SHAPE, 5)
        assert predictor.predict(spec)["predicted_ms"] == pytest.approx(e.item(), rel=1e-5)


def test_expected_latency_gradients_push_towards_faster_ops():
    net = small_supernet()
    predictor, values = fake_predictor(net.keys(), seed=3)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.zero_()
    e = net.expected_latency(predictor)
    e.backward()
    sp = net.space
    lat = np.array([[values[str(k)] for k in sp.layer_keys(0, c)] for c in sp.widths(0)]).mean(0)  # widths uniform
    g = net.alpha[0].grad.numpy()
    assert g[lat.argmax()] > 0 > g[lat.argmin()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in list(net.alpha) + list(net.width_logits))
    # under "derived" (default) a layer nobody reads is dropped: the last layer reading the strided layer directly
    # leaves the stage's other layers unread, so that input is the cheap one
    g = net.beta[net.space.layers - 1].grad
    assert g[0] < 0 < g[-1]
    net.zero_grad()
    net.expectation = "supernet"  # the supernet's own wiring: every present layer counts, the inputs cost nothing
    net.expected_latency(predictor).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in net.beta)


def test_expected_latency_under_derived_drops_unread_layers():
    """At one-hot weights where some layers are read by nobody, the derived expectation is the derived network's
    prediction; the supernet expectation counts the unread layers too (an upper bound)."""
    net = small_supernet()
    predictor, _ = fake_predictor(net.keys(), seed=4)
    rng = np.random.default_rng(7)
    dropped = 0
    for _ in range(8):
        set_one_hot(net, rng, chain=False)
        spec = genotype_netspec(derive(net), SHAPE, 5)
        derived = predictor.predict(spec)["predicted_ms"]
        net.expectation = "derived"
        assert net.expected_latency(predictor).item() == pytest.approx(derived, rel=1e-5)
        net.expectation = "supernet"
        upper = net.expected_latency(predictor).item()
        assert upper >= derived - 1e-6
        dropped += upper > derived + 1e-6
    assert dropped  # the draws did leave some layer unread


def every_network(sp: ChainSpace, layers: bool):
    """The keys of every network the space derives, by brute force: each width and strided op combination, with
    every layer removed (``layers`` false) or every layer of a stage kept with one op (all ops tried)."""
    for wi in itertools.product(range(len(sp.width_ratios)), repeat=3):
        widths = [sp.widths(s)[i] for s, i in enumerate(wi)]
        head = sp.head_keys(widths[0], widths[2])
        downs = [sp.down_keys(s, sp.stem_widths[1] if s == 0 else widths[s - 1], widths[s]) for s in range(3)]
        stage_ops = [sp.layer_keys(s, widths[s]) for s in range(3)] if layers else [[None]] * 3
        for d in itertools.product(*downs):
            for ops in itertools.product(*stage_ops):
                keys = sp.fixed_keys() + [str(k) for k in d] + [str(head["high"]), str(head["low"])]
                yield keys + ([str(k) for k in ops for _ in range(sp.layers)] if layers else [])


def test_smallest_latency_is_the_brute_force_minimum():
    torch.manual_seed(0)
    net = ChainSupernet(ChainSpace(SHAPE, 5, **SMALL, down_ops=("conv_3x3", "dwsep_5x5", "mbconv_k3_e6")))
    sp = net.space
    corr = {"model": "linear+io", "coef": {"raw": 1.5, "const": 0.2, "io": 0.3}}
    predictor, _ = fake_predictor(net.keys(), seed=5, correction=corr)
    best = min(float(apply_correction(corr, predictor.features(keys))) for keys in every_network(sp, layers=False))
    assert net.smallest_latency(predictor) == pytest.approx(best, rel=1e-6)
    rng = np.random.default_rng(2)
    for _ in range(3):
        set_one_hot(net, rng)
        assert net.smallest_latency(predictor) <= net.expected_latency(predictor).item() + 1e-6


def test_largest_latency_is_the_brute_force_maximum():
    """Every layer kept with its dearest op: the maximum over widths and strided ops, and no one-hot network above."""
    torch.manual_seed(0)
    net = ChainSupernet(ChainSpace(SHAPE, 5, **SMALL, down_ops=("conv_3x3", "dwsep_5x5", "mbconv_k3_e6"),
                                   layer_ops=("skip", "conv_3x3", "dwsep_5x5", "mbconv_k5_e6", "zoomconv_3x3")))
    sp = net.space
    corr = {"model": "linear+io", "coef": {"raw": 1.5, "const": 0.2, "io": 0.3}}
    predictor, _ = fake_predictor(net.keys(), seed=5, correction=corr)
    worst = max(float(apply_correction(corr, predictor.features(keys))) for keys in every_network(sp, layers=True))
    assert net.largest_latency(predictor) == pytest.approx(worst, rel=1e-6)
    assert net.largest_latency(predictor) > net.smallest_latency(predictor)
    rng = np.random.default_rng(2)
    for _ in range(3):
        set_one_hot(net, rng)
        assert net.expected_latency(predictor).item() <= net.largest_latency(predictor) + 1e-6


def test_supernet_forward_backward_reaches_alpha_beta_widths_and_weights():
    net = small_supernet()
    x = torch.randn(2, *SHAPE[1:])
    out = net(x)
    assert isinstance(out, SegOutput)
    assert list(out.features) == ["stem", "stage1", *STAGE_NAMES, "pre_logits"] == list(net.feature_channels)
    H, W = SHAPE[2:]
    for name, f in out.features.items():
        s = net.feature_strides[name]
        assert tuple(f.shape) == (2, net.feature_channels[name], -(-H // s), -(-W // s)), name
    assert tuple(out.logits.shape) == (2, 5, H // net.logits_stride, W // net.logits_stride)
    loss = out.logits.square().mean() + sum(f.square().mean() for f in out.features.values())
    loss.backward()
    arch, weights = net.arch_parameters(), net.weight_parameters()
    assert {id(p) for p in arch}.isdisjoint(id(p) for p in weights)
    assert len(arch) + len(weights) == len(list(net.parameters()))
    L = net.space.layers
    needs_grad = list(net.alpha) + list(net.alpha_down) + list(net.width_logits) + \
        [b for i, b in enumerate(net.beta) if i % L > 0]  # layer 1 has one predecessor: nothing to learn
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in needs_grad)
    assert sum(p.grad is not None and p.grad.abs().sum() > 0 for p in weights) > 0.8 * len(weights)
    # narrow width: channels beyond it are zero in every stage map
    with torch.no_grad():
        for lg in net.width_logits:
            lg.copy_(torch.tensor([30.0, -30.0]))
        out = net.eval()(x)
    for s, name in enumerate(STAGE_NAMES):
        c = net.space.widths(s)[0]
        assert out.features[name][:, c:].abs().max() < 1e-6 < out.features[name][:, :c].abs().max()


def test_gumbel_sampling_and_description():
    net = small_supernet()
    x = torch.randn(1, *SHAPE[1:])
    net.gumbel, net.tau, net.hard = True, 0.5, True
    torch.manual_seed(0)
    a = net(x).logits
    b = net(x).logits
    assert not torch.allclose(a, b)  # sampled architectures differ
    a.sum().backward()  # straight-through: hard samples still reach the logits
    assert net.alpha[0].grad is not None
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x).logits, net(x).logits)  # no sampling in eval mode
    desc = net.describe()
    assert [d["stage"] for d in desc] == list(STAGE_NAMES)
    for d in desc:
        assert d["down"]["ops"] == list(net.space.down_ops) and len(d["layers"]) == net.space.layers
        for j, layer in enumerate(d["layers"]):
            assert layer["kinds"] == [OPS[o]["kind"] for o in layer["ops"]]
            assert layer["inputs"] == list(range(j + 1))
            for p in (layer["probs"], layer["input_probs"]):
                assert p.requires_grad and float(p.detach().sum()) == pytest.approx(1.0)


def test_resolving_skips_and_unreachable_layers():
    # node 1 skip (= node 0), node 3 skip (= nodes 0 and 2), node 4 reads node 3
    layers, out = _resolve_stage(["skip", "conv_3x3", "skip", "mbconv_k3_e6"], [[0], [1], [0, 2], [3]])
    assert layers == [{"op": "conv_3x3", "inputs": [0]}, {"op": "mbconv_k3_e6", "inputs": [0, 1]}] and out == [2]
    # the last layer skips back to node 0: the stage is its strided layer alone
    assert _resolve_stage(["conv_3x3", "skip"], [[0], [0]]) == ([], [0])
    # layer 1 unreachable from the output
    assert _resolve_stage(["conv_3x3", "dwsep_3x3"], [[0], [0]]) == ([{"op": "dwsep_3x3", "inputs": [0]}], [1])


def derived(net: ChainSupernet) -> dict:
    """A top-2 genotype of random sharp choices with one skip layer and a zoomed conv."""
    set_one_hot(net, np.random.default_rng(4), chain=False)
    zoom = net.space.layer_ops.index("zoomconv_3x3")
    with torch.no_grad():
        for i, op in ((0, zoom), (1, 0)):  # stage 2: layer 1 zoomed conv, layer 2 skip (removed)
            net.alpha[i][:] = -30.0
            net.alpha[i][op] = 30.0
    return derive(net, top_k=2)


def test_derive_save_load_build_train(tmp_path):
    net = small_supernet()
    g = derived(net)
    path = save_genotype(g, tmp_path / "genotype.json")
    assert load_genotype(path) == g == json.loads(path.read_text())
    assert len(g["stages"][0]["layers"]) < net.space.layers

    K = 11
    model = build_model("searched", K, genotype=load_genotype(path))
    assert model.model_name == "searched" and model.arch_spec == {"genotype": g}
    again = build_model("searched", K, **model.arch_spec)  # what a checkpoint rebuild does
    assert again.state_dict().keys() == model.state_dict().keys()
    by_name = build_model(f"searched:{path}", K)
    assert by_name.model_name == "searched" and by_name.arch_spec == {"genotype": g}
    assert count_parameters(model) < count_parameters(net)

    x, y = torch.randn(2, *SHAPE[1:]), torch.randint(0, K, (2, *SHAPE[2:]))
    out = model(x)
    assert list(out.features) == ["stem", "stage1", *STAGE_NAMES, "pre_logits"] == list(model.feature_channels)
    assert tuple(out.features["stage4"].shape[1:2]) == (g["stages"][2]["width"],)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    logits = torch.nn.functional.interpolate(out.logits, size=SHAPE[2:], mode="bilinear", align_corners=False)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and sum(not torch.equal(a, b) for a, b in zip(before, model.parameters())) > 0

    spec = genotype_netspec(g, SHAPE, K)
    n_blocks = 2 + sum(len(st.blocks) for st in model.stages) + 5  # stem, stages, head modules
    assert len(spec.nodes) == n_blocks + 2  # + the head's upsampling and the final resize (functional)
    assert [n.key for n in spec.nodes[2:-7]] == [str(k) for st in model.stages for k in st.block_keys]


@pytest.mark.slow  # the dynamo exporter: ~10 s on 2 idle cores, 30 s on busy ones
def test_searched_model_exports_to_onnx(tmp_path):
    g = derived(small_supernet())
    assert any(layer["op"] == "zoomconv_3x3" for st in g["stages"] for layer in st["layers"])
    model = build_model("searched", 11, genotype=g)
    report = export_onnx(model, tmp_path / "searched.onnx", SHAPE)  # checked against PyTorch on a random input
    assert report["ok"] and report["max_abs_diff"] < 1e-3 and report["argmax_agreement"] > 0.99


def test_default_genotype_builds_and_predicts():
    model = build_model("searched", 5)
    assert model.arch_spec == {"genotype": DEFAULT_GENOTYPE}
    spec = genotype_netspec(DEFAULT_GENOTYPE, SHAPE, 5)
    predictor, values = fake_predictor(spec.keys())
    assert predictor.predict(spec, correction=None)["predicted_ms"] == pytest.approx(sum(values.values()))
    with pytest.raises(ConfigError, match="width_mult"):
        build_model("searched", 5, width_mult=0.5)
    with pytest.raises(ConfigError, match="unknown option"):
        build_model("searched", 5, depth=3)


def test_bad_genotypes_are_config_errors_naming_the_file(tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(ConfigError, match=f"{missing}.*does not exist"):
        load_genotype(missing)
    with pytest.raises(ConfigError, match="missing.json"):
        build_model(f"searched:{missing}", 5)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=f"{bad}.*not valid JSON"):
        load_genotype(bad)
    cases = {
        "format": ({**DEFAULT_GENOTYPE, "format": "something-else"}, "not a segdistill genotype"),
        "version": ({**DEFAULT_GENOTYPE, "version": 7}, "version 7"),
        "op": (json.loads(json.dumps(DEFAULT_GENOTYPE).replace("dwsep_5x5", "dwsep_9x9")), "unknown op 'dwsep_9x9'"),
        "inputs": (json.loads(json.dumps(DEFAULT_GENOTYPE).replace('"inputs": [1]', '"inputs": [2]')),
                   "layer 2: inputs"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(ConfigError, match=message) as e:
            load_genotype(path)
        assert str(path) in str(e.value)
    with pytest.raises(ConfigError, match="genotype mapping.*unknown op"):
        build_model("searched", 5, genotype=cases["op"][0])


def test_aux_skip_is_extra_weight_on_the_skip_candidate():
    """DARTS-' auxiliary skip: b x input beside a layer's mixed op, the same as adding b to its skip weight."""
    net = small_supernet()
    sp, stage = net.space, net.stages[1]
    torch.manual_seed(1)
    x = torch.randn(1, sp.max_width(0), 8, 12)
    w = lambda n: torch.softmax(torch.randn(n), 0)  # noqa: E731
    width, down = w(len(sp.width_ratios)), w(len(sp.down_ops))
    alpha, beta = [w(len(sp.layer_ops)) for _ in range(sp.layers)], [w(j + 1) for j in range(sp.layers)]
    skip = torch.nn.functional.one_hot(torch.tensor(sp.layer_ops.index("skip")), len(sp.layer_ops)).float()
    with torch.no_grad():
        aux = stage(x, width, down, alpha, beta, aux_skip=0.3)
        same = stage(x, width, down, [a + 0.3 * skip for a in alpha], beta)
        plain = stage(x, width, down, alpha, beta)
    torch.testing.assert_close(aux, same)
    assert not torch.allclose(aux, plain)
