"""The network a search returns (segdistill/search/genotype.py ``derive(price=...)``, objective.derive_within_budget,
``segdistill derive``): a zero price is the plain argmax; the priced stage is the best one by brute force; the
budgeted network meets its budget and lands in the band where the argmax did not; the command re-derives a search
run for a new budget. Fake latency tables (tests/test_search_hook.py's), nothing timed."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
from test_search_hook import SPACE, K, search_cfg, teacher_ckpt
from test_search_space import fake_predictor

from segdistill.cli import main
from segdistill.engine.hooks import build_hooks
from segdistill.engine.trainer import Trainer
from segdistill.errors import ConfigError
from segdistill.latency.predictor import LatencyPredictor
from segdistill.search.genotype import _resolve_stage, _stage_layers, derive, genotype_netspec, op_preference
from segdistill.search.objective import derive_within_budget
from segdistill.search.space_chain import ChainSpace, ChainSupernet
from segdistill.search.space_lgcnet import LgcSpace, LgcSupernet

SHAPE = (1, 3, 48, 64)


def space(**kw) -> ChainSpace:
    opts = {k: tuple(v) if isinstance(v, list) else v for k, v in SPACE.items() if k != "input"}
    return ChainSpace(SHAPE, K, **{**opts, **kw})


def randomised(net, seed: int, scale: float = 1.0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_(0, scale)
    return net


def predictor(seed: int = 0, correction=None) -> LatencyPredictor:
    return fake_predictor(space().keys(), seed, correction)[0]


def predict(pred, g) -> float:
    return float(pred.predict(genotype_netspec(g, SHAPE, K))["predicted_ms"])


def test_a_zero_price_is_the_plain_argmax():
    for seed in range(5):
        net = randomised(ChainSupernet(space(layers=3)), seed)
        g = derive(net)
        assert derive(net, price=lambda key: 0.0) == g
        for s, st in enumerate(g["stages"]):  # widths and strided ops: each the argmax of its own logits
            lg = net.stage_logits(s)
            assert st["width"] == net.space.widths(s)[int(lg["width"].argmax())]
            assert st["down"] == net.space.down_ops[int(lg["down"].argmax())]
        expected = []  # layers: argmax op and top-1 input of each, then removal of skip-won and unreachable layers
        for s in range(3):
            lg = net.stage_logits(s)
            ops = [net.space.layer_ops[int(a.argmax())] for a in lg["alpha"]]
            ins = [[int(b.argmax())] for b in lg["beta"]]
            expected.append(_resolve_stage(ops, ins))
        assert [(st["layers"], st["output"]) for st in g["stages"]] == expected
        lgc = randomised(LgcSupernet(LgcSpace(SHAPE, K, stem_widths=(8, 8), base_widths=(16, 24, 32),
                                              head_channels=16)), seed)
        assert lgc.derive(price=lambda key: 0.0) == lgc.derive()


def test_the_priced_stage_is_the_best_by_brute_force():
    """Top-1: the path the last layer reaches maximises sum(log p(op) - price + log p(input)) over kept layers, the
    rest at their argmax, against every assignment of ops and inputs of a 3-layer stage."""
    ops = ("skip", "a", "b")
    keys = ["k_skip", "k_a", "k_b"]
    price_of = {"k_skip": 0.0, "k_a": 0.7, "k_b": 1.9}
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        la = [torch.log_softmax(torch.randn(3, generator=g) * 2, 0).tolist() for _ in range(3)]
        lb = [torch.log_softmax(torch.randn(j, generator=g) * 2, 0).tolist() for j in (1, 2, 3)]
        sign = -1.0 if trial % 2 else 1.0  # negative prices favour dear ops (a budget left unused)
        price = lambda k: sign * price_of[k]  # noqa: E731
        score, logp, chosen, inputs = _stage_layers(la, lb, keys, ops, price, 1)

        def objective(assign_ops, assign_ins, priced: bool = True) -> float:
            layers, _ = _resolve_stage([ops[o] for o in assign_ops], [[i] for i in assign_ins])
            kept = sum(price(keys[ops.index(la_["op"])]) for la_ in layers) if priced else 0.0
            total = sum(la[j][o] + lb[j][i] for j, (o, i) in enumerate(zip(assign_ops, assign_ins)))
            return total - kept - sum(max(a) + max(b) for a, b in zip(la, lb))

        best = max(objective(o, i) for o in itertools.product(range(3), repeat=3)
                   for i in itertools.product(range(1), range(2), range(3)))
        assert score == pytest.approx(best, abs=1e-9)
        picked = [ops.index(o) for o in chosen], [i[0] for i in inputs]
        assert objective(*picked) == pytest.approx(best, abs=1e-9)
        assert logp == pytest.approx(objective(*picked, priced=False), abs=1e-9) and logp <= 0


@pytest.mark.parametrize("correction", [None, {"model": "linear+count", "coef": {"raw": 1.1, "count": 0.05,
                                                                                 "const": 0.3}}])
def test_the_budgeted_network_meets_its_budget_and_lands_in_the_band(correction):
    pred = predictor(0, correction)
    for seed in range(4):
        net = randomised(ChainSupernet(space(layers=3)), seed, scale=0.3)
        plain = predict(pred, derive(net))
        smallest, largest = net.smallest_latency(pred), net.largest_latency(pred)
        for budget in (plain / 0.6, plain * 0.8, (smallest + largest) / 2):
            budget = max(budget, smallest * 1.05)
            g, info = derive_within_budget(net, {"torch-cpu": pred}, {"torch-cpu": budget})
            ms = predict(pred, g)
            assert ms == pytest.approx(info["predicted_ms"]["torch-cpu"]) and info["argmax_ms"]["torch-cpu"] == plain
            assert ms <= budget * (1 + 1e-9), (seed, budget, info)
            if plain < 0.9 * budget:  # budget left by the argmax: the priced network uses (some of) it
                assert info["mu"] < 0 and ms >= plain
            elif plain > budget:
                assert info["mu"] > 0
            else:
                assert info["rule"] == "argmax" and g == derive(net)
        # a budget inside the space's range is reached: by one price, or with the widths fixed where a step of mu
        # jumps over the band
        budget = (smallest + largest) / 2
        g, info = derive_within_budget(net, {"torch-cpu": pred}, {"torch-cpu": budget})
        assert 0.9 * budget <= predict(pred, g) <= budget and info["rule"] in ("argmax", "priced", "priced-widths")
        assert info["logp"] <= 0


def test_a_jump_over_the_band_is_resolved_with_the_widths_fixed():
    """A band so narrow that one price rarely lands in it: the per-width-combination bisection finds a network in it,
    the likeliest one of those found (checked against each width combination's own result)."""
    pred = predictor(0)
    net = randomised(ChainSupernet(space(layers=3)), 5, scale=0.3)
    budget = (net.smallest_latency(pred) + net.largest_latency(pred)) / 2
    g, info = derive_within_budget(net, {"torch-cpu": pred}, {"torch-cpu": budget}, band=(0.97, 1.0))
    assert 0.97 * budget <= predict(pred, g) <= budget
    assert info["rule"] == "priced-widths"  # (this seed's single price jumps over the band)
    widths = [st["width"] for st in g["stages"]]
    stats = {}
    derive(net, widths=widths, stats=stats)  # the plain argmax at those widths: at least as likely
    assert stats["logp"] >= info["logp"] and [st["width"] for st in derive(net, widths=widths)["stages"]] == widths


def test_two_platforms_are_met_at_once():
    a, b = predictor(0), predictor(1)
    net = randomised(ChainSupernet(space(layers=3)), 3, scale=0.3)
    budgets = {"torch-cpu": 1.3 * predict(a, derive(net)), "onnxruntime-cpu": 1.1 * predict(b, derive(net))}
    budgets = {p: max(v, 1.05 * net.smallest_latency(pr)) for (p, v), pr in zip(budgets.items(), (a, b))}
    g, info = derive_within_budget(net, {"torch-cpu": a, "onnxruntime-cpu": b}, budgets)
    assert predict(a, g) <= budgets["torch-cpu"] and predict(b, g) <= budgets["onnxruntime-cpu"]


def test_the_lgcnet_space_is_priced_too():
    net = randomised(LgcSupernet(LgcSpace(SHAPE, K, stem_widths=(8, 8), base_widths=(16, 24, 32), nodes=2,
                                          head_channels=16)), 0, scale=0.3)
    pred = fake_predictor(net.keys())[0]
    plain = predict(pred, net.derive())
    for budget in (plain * 0.8, plain * 1.3):
        budget = max(budget, 1.05 * net.smallest_latency(pred))
        g, info = derive_within_budget(net, {"torch-cpu": pred}, {"torch-cpu": budget})
        assert predict(pred, g) <= budget and info["argmax_ms"]["torch-cpu"] == pytest.approx(plain)
        assert info["mu"] > 0 if plain > budget else info["mu"] <= 0


def test_ops_picked_by_the_weights_whatever_the_price():
    """derive_ops=weights: every kept layer's op is its likeliest non-skip op and every strided op its likeliest, at
    any budget; the price moves depth, inputs and widths only; a zero price is still the plain argmax."""
    pred = predictor(0)
    against = []
    for seed in range(4):
        net = randomised(ChainSupernet(space(layers=3)), seed, scale=0.3)
        stats = {}
        assert derive(net, ops="weights") == derive(net, stats=stats)
        assert stats["weights_ops"][0] == stats["weights_ops"][1] > 0  # the plain argmax: every op the weights' pick
        sp = net.space
        skip = sp.layer_ops.index("skip")
        best = [[sp.layer_ops[max((i for i in range(len(a)) if i != skip), key=lambda i: float(a[i].detach()))]
                 for a in net.stage_logits(s)["alpha"]] for s in range(3)]
        smallest, largest = net.smallest_latency(pred), net.largest_latency(pred)
        plain = predict(pred, derive(net))
        for budget in (max(plain * 0.8, smallest * 1.05), (smallest + largest) / 2, largest * 2):
            g, info = derive_within_budget(net, {"torch-cpu": pred}, {"torch-cpu": budget}, ops="weights")
            ms = predict(pred, g)
            assert ms == pytest.approx(info["predicted_ms"]["torch-cpu"]) and ms <= budget * (1 + 1e-9)
            assert info["weights_ops"][0] == info["weights_ops"][1]
            for s, st in enumerate(g["stages"]):
                assert st["down"] == sp.down_ops[int(net.stage_logits(s)["down"].argmax())]
                kept = iter(best[s])  # the kept layers, in order, are a subsequence of the weights' picks
                assert all(any(layer["op"] == b for b in kept) for layer in st["layers"]), (seed, budget, st)
        g, info = derive_within_budget(net, {"torch-cpu": pred}, {"torch-cpu": largest * 2}, ops="weights")
        assert [len(st["layers"]) for st in g["stages"]] == [3, 3, 3]  # room to spare: every layer kept (skip is free)
        assert info["rule"] == "unreachable" and predict(pred, g) <= largest
        _, priced = derive_within_budget(net, {"torch-cpu": pred}, {"torch-cpu": largest * 2})
        against.append(priced["weights_ops"][1] - priced["weights_ops"][0])  # ops the price chose
    assert max(against) > 0
    with pytest.raises(ConfigError, match="priced, weights"):
        derive(net, ops="cheapest")


def test_lgcnet_ops_picked_by_the_weights():
    """LGCNet, derive_ops=weights: every kept edge's and fusion level's op is its likeliest non-none op at any price;
    the price only changes which edges and levels are kept."""
    from segdistill.search.space_lgcnet import LEVELS

    for seed in range(3):
        net = randomised(LgcSupernet(LgcSpace(SHAPE, K, stem_widths=(8, 8), base_widths=(16, 24, 32), nodes=2,
                                              head_channels=16)), seed)
        assert derive(net, ops="weights") == derive(net)
        desc, pred = net.describe(), fake_predictor(net.keys())[0]
        best = lambda probs, ops: max((o for o in ops if o != "none"), key=lambda o: float(probs[ops.index(o)].detach()))  # noqa: E731
        smallest, largest = net.smallest_latency(pred), net.largest_latency(pred)
        for budget in (1.05 * smallest, (smallest + largest) / 2, 2 * largest):
            g, _ = derive_within_budget(net, {"torch-cpu": pred}, {"torch-cpu": budget}, ops="weights")
            for k, cell in enumerate(desc["cells"]):
                for i, node in enumerate(g["cells"][k]["nodes"]):
                    for src, op in zip(node["inputs"], node["ops"]):
                        e = cell["edges"].index((i, src))
                        assert op == best(cell["probs"][e], cell["ops"]), (seed, budget, k, i, src)
            for level in g["fusion_edges"]:
                lv = LEVELS.index(level["level"])
                assert level["op"] == best(desc["fusion"]["probs"][lv], desc["fusion"]["ops"])


def test_a_search_returns_the_budgeted_network_and_the_command_rederives_it(tmp_path, capsys):
    cfg = search_cfg(tmp_path, budget=1000.0)  # far above the argmax: the priced network must use more of it
    trainer = Trainer(cfg, build_hooks(cfg))
    trainer.train()
    out = tmp_path / "run"
    rec = [json.loads(x) for x in (out / "search_log.jsonl").read_text().splitlines()][-1]
    largest = trainer.model.largest_latency(trainer.hook("search").predictors["torch-cpu"])
    assert rec["derive_rule"] == "unreachable" and rec["derive_mu"] < 0  # 1000 ms is beyond the space
    assert rec["predicted_ms/torch-cpu"] == pytest.approx(largest, rel=1e-6)
    assert rec["argmax_ms/torch-cpu"] <= rec["predicted_ms/torch-cpu"]
    assert "plain argmax" in (out / "report.md").read_text() and "## Architecture weights" in (out / "report.md").read_text()
    same, kept = rec["derive_weights_ops"]
    assert 0 <= same <= kept and f"Of its {kept} ops" in (out / "report.md").read_text()

    mid = (rec["argmax_ms/torch-cpu"] + largest) / 2
    main(["derive", str(out), "--budget", f"torch-cpu={mid}", "--out", str(tmp_path / "g.json"), "--json"])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    want = op_preference(trainer.model)
    assert res["op_preference"]["ops"] == pytest.approx(want["ops"]) and res["op_preference"]["choices"] == want["choices"]
    g = json.loads((tmp_path / "g.json").read_text())
    pred = trainer.hook("search").predictors["torch-cpu"]
    assert predict(pred, g) == pytest.approx(res["predicted_ms"]["torch-cpu"]) and predict(pred, g) <= mid
    main(["derive", str(out), "--budget", f"torch-cpu={mid}", "--ops", "weights", "--out", str(tmp_path / "w.json"),
          "--json"])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    want, _ = derive_within_budget(trainer.model, {"torch-cpu": pred}, {"torch-cpu": mid}, ops="weights")
    assert res["ops"] == "weights" and json.loads((tmp_path / "w.json").read_text()) == want
    main(["derive", str(out / "best.pt"), "--argmax", "--out", str(tmp_path / "a.json")])
    assert json.loads((tmp_path / "a.json").read_text()) == derive(trainer.model)
    with pytest.raises(SystemExit):
        main(["derive", str(out), "--budget", "torch-cpu"])
    assert "PLATFORM=MS" in capsys.readouterr().err


def test_a_search_with_derive_ops_weights_returns_the_weights_ops(tmp_path):
    cfg = search_cfg(tmp_path, budget=1000.0, derive_ops="weights")
    trainer = Trainer(cfg, build_hooks(cfg))
    trainer.train()
    out = tmp_path / "run"
    want, _ = derive_within_budget(trainer.model, trainer.hook("search").predictors, {"torch-cpu": 1000.0}, ops="weights")
    assert json.loads((out / "genotype.json").read_text()) == want
    assert "derive_ops=weights" in (out / "report.md").read_text()


def test_derive_from_a_model_that_is_not_a_supernet_is_a_clear_error(tmp_path_factory):
    from segdistill.search.cli import cmd_derive

    class Args:
        supernet = str(teacher_ckpt.__wrapped__(tmp_path_factory))  # a tiny LR-ASPP checkpoint
        budget, lut, band, argmax, threads, out, json = None, None, None, False, 1, None, False

    with pytest.raises(ConfigError, match="not a search supernet"):
        cmd_derive(Args)


# ---------------------------------------------------------------------------- random networks of a space
def test_space_networks_are_the_spaces_derived_networks_and_run():
    from test_search_lgcnet import TINY

    from segdistill.latency.network import ChainNet
    from segdistill.search.genotype import space_networks

    opts = {k: v for k, v in SPACE.items() if k != "input"}
    nets = space_networks("chain", 6, SHAPE, seed=3, num_classes=K, **opts)
    again = space_networks("chain", 6, SHAPE, seed=3, num_classes=K, **opts)
    assert [n.keys() for n in nets] == [n.keys() for n in again]  # deterministic per seed
    assert len({tuple(n.keys()) for n in nets}) > 1 and len({n.name for n in nets}) == 6  # distinct draws, names
    assert {n.meta["genotype"]["space"] for n in nets} == {"chain"}
    lgc = space_networks("lgcnet", 2, SHAPE, seed=0, num_classes=K, **{k: list(v) if isinstance(v, tuple) else v
                                                                          for k, v in TINY.items()})
    for spec in nets[:2] + lgc:
        with torch.no_grad():
            assert ChainNet(spec).eval()(torch.randn(SHAPE)).shape == (1, K, *SHAPE[2:])
    with pytest.raises(ConfigError, match="unknown search space 'nope'"):
        space_networks("nope", 1, SHAPE)


def test_priced_space_networks_span_the_spaces_costs():
    """``price_span``: network 0 is derived at the most negative price (dearest), the last at the most positive
    (cheapest), so the draws reach further out than the plain argmax draws on both sides."""
    from segdistill.search.genotype import space_networks

    opts = {k: v for k, v in SPACE.items() if k != "input"}
    space = ChainSupernet(ChainSpace(SHAPE, K, **{k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()}))
    pred, _ = fake_predictor(space.keys())
    raw = lambda nets: [pred.predict(n)["raw_ms"] for n in nets]  # noqa: E731
    plain = raw(space_networks("chain", 12, SHAPE, seed=3, num_classes=K, **opts))
    nets = space_networks("chain", 12, SHAPE, seed=3, num_classes=K, predictor=pred, price_span=1000.0, **opts)
    spanned = raw(nets)
    assert [n.meta["price_nats"] for n in nets][::11] == [-1000.0, 1000.0]
    assert spanned[0] == pytest.approx(space.largest_latency(pred), rel=0.01) and spanned[0] > max(plain)
    assert spanned[-1] == pytest.approx(space.smallest_latency(pred), rel=0.01) and spanned[-1] < min(plain)
    with pytest.raises(ConfigError, match="price_span needs the predictor"):
        space_networks("chain", 2, SHAPE, price_span=5.0, **opts)


def test_latency_fit_on_a_space_records_its_networks(tmp_path, capsys):
    from segdistill.latency.lut import LatencyTable

    lut = tmp_path / "lut.json"
    opts = [f"--space-option={k}={json.dumps(v)}" for k, v in SPACE.items() if k != "input"]
    shape = "x".join(map(str, SHAPE[1:]))
    main(["lut", "build", "--platform", "torch-cpu", "--threads", "1", "--space", "chain", *opts, "--input", shape,
          "--num-classes", str(K), "--runs", "2", "--min-time", "0", "--warmup", "1", "--quiet", "--out", str(lut)])
    n_keys = len(LatencyTable.load(lut))
    main(["latency", "fit", "--lut", str(lut), "--space", "chain", *opts, "--nets", "5", "--input", shape,
          "--num-classes", str(K), "--runs", "2", "--min-time", "0", "--warmup", "1"])
    corr = LatencyTable.load(lut).correction
    assert corr["fitted_on"] == 5 and corr["networks"].startswith("5 random networks of search space chain")
    assert corr["space"] == "chain"  # a search in another space warns (tests/test_search_hook.py)
    assert len(LatencyTable.load(lut)) == n_keys  # a space's networks use only the space's blocks: nothing measured
    main(["lut", "show", str(lut)])
    assert "fitted on 5 random networks of search space chain" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["latency", "fit", "--lut", str(lut), "--space-option", "layers=1", "--nets", "5"])
    assert "--space-option and --price-span need --space" in capsys.readouterr().err


def test_op_preference_reads_uniform_and_decided_weights():
    net = ChainSupernet(space())
    with torch.no_grad():
        for p in net.arch_parameters():
            p.zero_()
    uni = op_preference(net)
    n_choices = 3 + 3 * SPACE["layers"]  # a strided op and the layers' ops per stage
    assert uni["choices"] == n_choices and uni["decided"] == 0 and uni["max_ratio"] == pytest.approx(1.0)
    assert all(r == pytest.approx(1.0) for r in uni["ops"].values())
    with torch.no_grad():
        for name, p in net.named_arch_parameters():
            if name.startswith("alpha"):
                p[..., 0] = 10.0  # every op choice picks its first candidate
    dec = op_preference(net)
    assert dec["decided"] == 1.0 and dec["ops"]["skip"] > 5 and dec["ops"]["dwsep_3x3"] < 0.1
    lgc = op_preference(LgcSupernet(LgcSpace(SHAPE, K, stem_widths=(8, 8), base_widths=(16, 24, 32), nodes=2,
                                             head_channels=16)))
    assert lgc["choices"] > 0 and 0.0 <= lgc["decided"] <= 1.0
