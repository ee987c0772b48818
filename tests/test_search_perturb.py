"""Ops ranked by perturbation (segdistill/search/perturb.py, ``segdistill derive --ops perturb``): an op the supernet
leans on scores highest; the scores are the loss with the op taken out less the loss with it; reordering the
logits makes that op the weights' pick without moving skip; the command derives from the reordered logits and writes
the scores. Fake latency tables, nothing timed."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from test_search_derive import SHAPE, randomised, space
from test_search_hook import search_cfg
from test_search_lgcnet import SHAPE as LGC_SHAPE
from test_search_lgcnet import TINY, lgcnet_cfg

from segdistill.cli import main
from segdistill.engine.checkpoint import build_from_checkpoint
from segdistill.engine.hooks import build_hooks
from segdistill.engine.trainer import Trainer
from segdistill.errors import ConfigError
from segdistill.search.objective import derive_within_budget, platform_predictors
from segdistill.search.perturb import choices, decided, mean_ranks, op_importance, rank_by_importance
from segdistill.search.space_chain import ChainSupernet
from segdistill.search.space_lgcnet import LgcSpace, LgcSupernet, cell_edges

K = 5


def leaning_on(net: ChainSupernet, layer: int, op: int, gain: float = 50.0):
    """Make layer ``layer``'s candidate ``op`` dominate its mixed op: its last BatchNorm's scale times ``gain``."""
    s, j = divmod(layer, net.space.layers)
    bn = [m for m in net.stages[s].layers[j].ops[op].modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
    with torch.no_grad():
        bn.weight.mul_(gain)


def batches_and_loss(net, n: int = 2, shape=SHAPE):
    torch.manual_seed(0)
    xs = [torch.randn(2, *shape[1:]) for _ in range(n)]
    net.train()
    with torch.no_grad():
        refs = [net(x).logits for x in xs]  # the loss: distance to the unperturbed supernet's output
    batches = list(zip(xs, refs))
    return batches, lambda out, ref: torch.mean((out.logits - ref) ** 2)


def test_the_op_the_supernet_leans_on_scores_highest_and_becomes_the_pick():
    torch.manual_seed(0)  # the supernet's initial weights: the same whatever ran before
    net = randomised(ChainSupernet(space(layers=2)), 0, scale=0.3)
    sp = net.space
    skip = sp.layer_ops.index("skip")
    weakest = min((i for i in range(len(sp.layer_ops)) if i != skip), key=lambda i: float(net.alpha[1][i].detach()))
    leaning_on(net, 1, weakest)
    before = {n: p.detach().clone() for n, p in net.named_arch_parameters()}
    batches, loss = batches_and_loss(net)
    imp = op_importance(net, batches, loss, progress=False)
    assert all(torch.equal(p, before[n]) for n, p in net.named_arch_parameters())  # logits put back
    assert net.training and not net.gumbel
    assert imp["base"] == pytest.approx(0.0, abs=1e-10)
    c = imp["choices"]["alpha.1"]
    assert c["ops"] == list(sp.layer_ops) and c["importance"][skip] is None and c["se"][skip] is None
    scored = [v for v in c["importance"] if v is not None]
    assert c["importance"][weakest] == max(scored) and c["importance"][weakest] > 10 * sorted(scored)[-2]
    assert set(imp["choices"]) == {c[0] for c in choices(net)} and len(imp["choices"]) == 3 * 2 + 3
    # a score is the loss with the op's logit at -inf less the loss with it
    with torch.no_grad():
        net.alpha[1][weakest] = -math.inf
        taken_out = sum(float(loss(net(x), y)) for x, y in batches) / len(batches)
        net.alpha[1][weakest] = before["alpha.1"][weakest]
    assert c["importance"][weakest] == pytest.approx(taken_out - imp["base"], rel=1e-5)

    lead, n = decided(imp)
    ranks = mean_ranks(imp)
    assert set(ranks) == set(sp.layer_ops) - {"skip"} | set(sp.down_ops) and list(ranks.values()) == sorted(ranks.values())
    assert 1 <= min(ranks.values()) and max(ranks.values()) <= len(sp.layer_ops) - 1
    assert 1 <= lead <= n == 9
    picks = rank_by_importance(net, imp)
    a = net.alpha[1].detach()
    pick = lambda t: max((i for i in range(len(t)) if i != skip), key=lambda i: float(t[i]))  # noqa: E731
    assert picks["alpha.1"] == (sp.layer_ops[pick(before["alpha.1"])], sp.layer_ops[weakest])
    assert pick(a) == weakest
    assert a[skip] == before["alpha.1"][skip]  # depth's question untouched
    assert sorted(a.tolist()) == sorted(before["alpha.1"].tolist())  # a permutation of the same values
    for name, p, _, _ in choices(net):  # every choice now ranks its candidates by importance
        imps = imp["choices"][name]["importance"]
        order = sorted((i for i, v in enumerate(imps) if v is not None), key=lambda i: -imps[i])
        q = p.detach()
        assert [float(q[i]) for i in order] == sorted((float(q[i]) for i in order), reverse=True)
    assert all(torch.equal(p, before[n]) for n, p in net.named_arch_parameters() if not n.startswith("alpha"))


def test_lgcnet_ops_are_scored_after_the_ggm_and_none_is_left_alone():
    torch.manual_seed(0)
    net = randomised(LgcSupernet(LgcSpace(LGC_SHAPE, K, **TINY), ggm_gamma=0.5), 0)
    sp = net.space
    none, cell_none = sp.fusion_ops.index("none"), sp.cell_ops.index("none")
    x = torch.randn(2, *LGC_SHAPE[1:])
    net.train()
    with torch.no_grad():
        out0, updated, g0 = net(x).logits, [a.detach().clone() for a in net.cell_alphas()], net.derive()
    batches, loss = batches_and_loss(net, shape=LGC_SHAPE)
    imp = op_importance(net, batches, loss, progress=False)
    # the GGM is folded into the logits: the same network, logits that are the updated alpha'
    assert net.ggm is None and all(torch.equal(a, b) for a, b in zip(net.cell_alphas(), updated))
    with torch.no_grad():
        assert torch.allclose(net(x).logits, out0, atol=1e-6)
    assert net.derive() == g0
    edges = len(cell_edges(sp.nodes))
    assert list(imp["choices"]) == [f"alpha.{k}.{e}" for k in range(3) for e in range(edges)] + [
        f"alpha_fusion.{lv}" for lv in range(4)]
    assert all(c["importance"][c["ops"].index("none")] is None for c in imp["choices"].values())
    # a score of the third cell (the one the GGM updated from the second) is the loss with alpha' at -inf, less the base
    i = sp.cell_ops.index("skip")  # an identity edge: scored like any op (only none is kept)
    with torch.no_grad():
        net.alpha[2][0, i] = -math.inf
        taken_out = sum(float(loss(net(x), y)) for x, y in batches) / len(batches)
        net.alpha[2][0, i] = updated[2][0, i]
    assert imp["choices"]["alpha.2.0"]["importance"][i] == pytest.approx(taken_out - imp["base"], rel=1e-5, abs=1e-9)

    before_cells = [a.detach().clone() for a in net.alpha]
    before_fusion = net.alpha_fusion.detach().clone()
    rank_by_importance(net, imp)
    for k in range(3):
        for e in range(edges):
            a, b = net.alpha[k][e].detach(), before_cells[k][e]
            assert a[cell_none] == b[cell_none] and sorted(a.tolist()) == sorted(b.tolist())
            imps = imp["choices"][f"alpha.{k}.{e}"]["importance"]
            top = max((j for j, v in enumerate(imps) if v is not None), key=lambda j: imps[j])
            assert float(a[top]) == max(float(a[j]) for j, v in enumerate(imps) if v is not None)
    assert torch.equal(net.alpha_fusion[:, none], before_fusion[:, none])

    shared = LgcSupernet(LgcSpace(LGC_SHAPE, K, **TINY), share_cells=True, ggm_gamma=0)
    assert [c[0] for c in choices(shared)][:edges + 1] == [f"alpha.0.{e}" for e in range(edges)] + ["alpha_fusion.0"]
    with pytest.raises(ConfigError, match="chain or LGCNet"):
        choices(torch.nn.Linear(2, 2))


def test_the_command_ranks_an_lgcnet_search(tmp_path, capsys):
    cfg = lgcnet_cfg(tmp_path)
    Trainer(cfg, build_hooks(cfg)).train()
    main(["derive", str(tmp_path / "run"), "--ops", "perturb", "--batches", "1", "--threads", "1", "--out",
          str(tmp_path / "l.json"), "--json"])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    scores = json.loads((tmp_path / "l-perturbation.json").read_text())
    assert res["ops"] == "perturb"
    assert len(scores["choices"]) == res["perturbation"]["choices"] == 3 * len(cell_edges(2)) + 4
    g = json.loads((tmp_path / "l.json").read_text())
    assert g["space"] == "lgcnet" and "ggm" not in json.dumps(g)


def test_the_command_derives_from_the_ranked_logits(tmp_path, capsys):
    cfg = search_cfg(tmp_path, budget=1000.0)
    Trainer(cfg, build_hooks(cfg)).train()
    out = tmp_path / "run"
    main(["derive", str(out), "--ops", "perturb", "--batches", "2", "--threads", "1", "--out", str(tmp_path / "p.json"),
          "--json"])
    printed = capsys.readouterr().out
    res = json.loads(printed.strip().splitlines()[-1])
    assert res["ops"] == "perturb" and "ranking's pick" in printed
    scores = json.loads((tmp_path / "p-perturbation.json").read_text())
    assert scores["batches"] == 2 and len(scores["choices"]) == res["perturbation"]["choices"]
    net, _ = build_from_checkpoint(out / "last.pt")
    rank_by_importance(net, scores)
    search = SimpleNamespace(budget={"torch-cpu": 1000.0}, lut={"torch-cpu": cfg.search.lut["torch-cpu"]},
                             band=[0.9, 1.0], input=list(net.space.input_shape))
    want, _ = derive_within_budget(net, platform_predictors(search, net.space, out, 1), {"torch-cpu": 1000.0},
                                   ops="weights")
    assert json.loads((tmp_path / "p.json").read_text()) == want
    assert res["weights_ops"][0] == res["weights_ops"][1]  # every kept op is the ranking's pick
    main(["derive", str(out / "best.pt"), "--ops", "perturb", "--batches", "1", "--threads", "1", "--out",
          str(tmp_path / "b.json")])  # a weights-only checkpoint: the run's last.pt gives the data position
    assert (tmp_path / "b-perturbation.json").is_file() and (tmp_path / "b.json").is_file()


def test_a_search_with_derive_ops_perturb_returns_the_ranked_network(tmp_path):
    cfg = search_cfg(tmp_path, iters=4, budget=1000.0, derive_ops="perturb", perturb_batches=2)
    cfg.train.val_interval = 2
    hooks = build_hooks(cfg)
    Trainer(cfg, hooks).train()
    out = tmp_path / "run"
    log = [json.loads(line) for line in (out / "search_log.jsonl").read_text().splitlines()]
    validations = [r for r in log if r["event"] == "validate"]
    assert len(validations) == 2 and "perturb" not in validations[0]  # only the last validation ranks
    pt = validations[-1]["perturb"]
    scores = json.loads((out / "perturbation.json").read_text())
    assert pt["batches"] == scores["batches"] == 2 and pt["choices"] == len(scores["choices"])
    assert "Ops ranked by perturbation" in (out / "report.md").read_text()
    # the returned network is the weights rule on the logits the scores reorder; the supernet itself is unchanged
    net, _ = build_from_checkpoint(out / "last.pt")
    hook = next(h for h in hooks if h.name == "search")
    assert all(torch.equal(p, q) for p, q in zip(net.arch_parameters(), hook.supernet.arch_parameters()))
    rank_by_importance(net, scores)
    want, _ = derive_within_budget(net, hook.predictors, {"torch-cpu": 1000.0}, ops="weights")
    assert json.loads((out / "genotype.json").read_text()) == want
