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

from segdistill.cli import main
from segdistill.engine.checkpoint import build_from_checkpoint
from segdistill.engine.hooks import build_hooks
from segdistill.engine.trainer import Trainer
from segdistill.errors import ConfigError
from segdistill.search.objective import derive_within_budget, platform_predictors
from segdistill.search.perturb import choices, decided, mean_ranks, op_importance, rank_by_importance
from segdistill.search.space_chain import ChainSupernet
from segdistill.search.space_lgcnet import LgcSpace, LgcSupernet

K = 5


def leaning_on(net: ChainSupernet, layer: int, op: int, gain: float = 50.0):
    """Make layer ``layer``'s candidate ``op`` dominate its mixed op: its last BatchNorm's scale times ``gain``."""
    s, j = divmod(layer, net.space.layers)
    bn = [m for m in net.stages[s].layers[j].ops[op].modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
    with torch.no_grad():
        bn.weight.mul_(gain)


def batches_and_loss(net, n: int = 2):
    torch.manual_seed(0)
    xs = [torch.randn(2, *SHAPE[1:]) for _ in range(n)]
    net.train()
    with torch.no_grad():
        refs = [net(x).logits for x in xs]  # the loss: distance to the unperturbed supernet's output
    batches = list(zip(xs, refs))
    return batches, lambda out, ref: torch.mean((out.logits - ref) ** 2)


def test_the_op_the_supernet_leans_on_scores_highest_and_becomes_the_pick():
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
    assert set(imp["choices"]) == {n for n, _, _ in choices(net)} and len(imp["choices"]) == 3 * 2 + 3
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
    for name, p, ops in choices(net):  # every choice now ranks its candidates by importance
        imps = imp["choices"][name]["importance"]
        order = sorted((i for i, v in enumerate(imps) if v is not None), key=lambda i: -imps[i])
        q = p.detach()
        assert [float(q[i]) for i in order] == sorted((float(q[i]) for i in order), reverse=True)
    assert all(torch.equal(p, before[n]) for n, p in net.named_arch_parameters() if not n.startswith("alpha"))


def test_other_spaces_are_a_clear_error():
    net = LgcSupernet(LgcSpace(SHAPE, K, stem_widths=(8, 8), base_widths=(16, 24, 32), nodes=2, head_channels=16))
    with pytest.raises(ConfigError, match="chain space only"):
        choices(net)


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
