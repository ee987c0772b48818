"""The search on the trainer (segdistill/search/hook.py): a short search moves alpha and writes its outputs, weights
and architecture see disjoint halves, resume equals a run never stopped, band control, the budget/platform errors,
the `search` and `graph` commands, and alpha identical over 2 gloo processes.

Tiny on purpose: synthetic 48x64 images, one searchable layer per stage, narrow widths, a fake latency table (made-up
numbers per key of the space, on this machine); nothing is timed.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from segdistill.cli import main
from segdistill.config import Config, save_config
from segdistill.engine.checkpoint import build_from_checkpoint, load_checkpoint
from segdistill.engine.hooks import build_hooks
from segdistill.engine.trainer import Hook, Trainer
from segdistill.errors import ConfigError
from segdistill.latency import standalone as core
from segdistill.search.hook import SearchHook
from segdistill.search.objective import band_update, latency_penalty
from segdistill.search.space_chain import ChainSpace, ChainSupernet

K = 8  # synthetic classes
SPACE = dict(input=[1, 3, 48, 64], layers=1, base_widths=[16, 24, 32], stem_widths=[8, 8], width_ratios=[0.5, 1.0],
             head_channels=16)


def fake_lut(path, seed: int = 0):
    """A torch-cpu table of this machine with made-up latencies (0.1-2 ms) for every key of the tiny space."""
    space = ChainSpace(tuple(SPACE["input"]), K, **{k: tuple(v) if isinstance(v, list) else v
                                                    for k, v in SPACE.items() if k != "input"})
    rng = np.random.default_rng(seed)
    entries = {k: {"median_ms": 0.0 if core.is_free(k) else float(rng.uniform(0.1, 2.0))} for k in space.keys()}
    table = {"format": "segdistill-latency-table", "version": 1, "platform": "torch-cpu", "platform_info": {},
             "threads": 1, "timing": {}, "device": core.machine_info(), "versions": {}, "date": "2026-12-01",
             "units": "ms", "built_for": [], "entries": entries}
    path.write_text(json.dumps(table))
    return path


def search_cfg(tmp_path, out="run", iters=2, budget=10.0, **search) -> Config:
    cfg = Config()
    d = cfg.data
    d.name, d.synthetic_size, d.synthetic_train, d.synthetic_val, d.batch_size = "synthetic", [48, 64], 8, 2, 4
    d.crop_size, d.scale_range = [48, 64], [0.75, 1.25]
    cfg.optim.lr = 0.02
    t = cfg.train
    t.iters, t.val_interval, t.ckpt_interval, t.log_interval, t.progress, t.threads = iters, iters, 2, 1, False, 1
    t.out_dir = str(tmp_path / out)
    s = cfg.search
    s.space = "chain"
    for k, v in SPACE.items():
        setattr(s, k, list(v) if isinstance(v, list) else v)
    lut = tmp_path / "lut.json"
    if not lut.exists():
        fake_lut(lut)
    s.budget, s.lut = {"torch-cpu": budget}, {"torch-cpu": str(lut)}
    s.arch_lr = 0.05
    for k, v in search.items():
        setattr(s, k, v)
    return cfg


def arch_of(state_or_model) -> dict:
    if isinstance(state_or_model, ChainSupernet):
        return {n: p.detach().clone() for n, p in state_or_model.named_arch_parameters()}
    return {k: v for k, v in state_or_model.items() if k.split(".")[0] in ("alpha_down", "alpha", "beta", "width_logits")}


@pytest.fixture(autouse=True)
def one_thread():
    with core.torch_threads(1):
        yield


def test_two_iteration_search_moves_alpha_and_writes_its_outputs(tmp_path):
    cfg = search_cfg(tmp_path, budget=10.0)
    hooks = build_hooks(cfg)
    assert [h.name for h in hooks] == ["search"] and cfg.model.name == "chain_supernet"
    trainer = Trainer(cfg, hooks)
    net = trainer.model
    assert isinstance(net, ChainSupernet)
    main_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not main_params & {id(p) for p in net.arch_parameters()}  # alpha only under the search's Adam
    assert {id(p) for p in net.weight_parameters()} <= main_params
    before = arch_of(net)
    trainer.train()
    after = arch_of(net)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    out = tmp_path / "run"
    for name in ("genotype.json", "search_log.jsonl", "arch_000002.png", "latency.png", "report.md", "best.pt",
                 "last.pt"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "search_log.jsonl").read_text().splitlines()]
    assert {r["event"] for r in records} == {"band", "validate"}
    assert all("expected_ms/torch-cpu" in r and "predicted_ms/torch-cpu" in r for r in records)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("arch/lat_torch-cpu" in r and "arch/ce" in r for r in logged)
    report = (out / "report.md").read_text()
    assert "torch-cpu" in report and "genotype.json" in report
    # best.pt / last.pt rebuild the supernet (architecture weights included)
    model, meta = build_from_checkpoint(out / "last.pt")
    assert meta["model"]["name"] == "chain_supernet" and isinstance(model, ChainSupernet)
    assert all(torch.equal(a, after[k]) for k, a in arch_of(model).items())


class Record(Hook):
    """Records the dataset indices of every weight batch."""

    def __init__(self):
        self.seen = []

    def after_step(self, trainer):
        self.seen += trainer.batch["index"].tolist()


def test_weights_and_architecture_see_disjoint_halves(tmp_path, monkeypatch):
    cfg = search_cfg(tmp_path, iters=4)
    cfg.data.synthetic_train = 16
    arch_seen = []
    original = SearchHook.next_arch_batch

    def spy(self):
        batch = original(self)
        arch_seen.extend(batch["index"].tolist())
        return batch

    monkeypatch.setattr(SearchHook, "next_arch_batch", spy)
    rec = Record()
    hooks = build_hooks(cfg)
    Trainer(cfg, hooks + [rec]).train()
    search = hooks[0]
    assert set(rec.seen) <= set(search.weight_indices) and set(arch_seen) <= set(search.arch_indices)
    assert not set(search.weight_indices) & set(search.arch_indices)
    assert sorted(search.weight_indices + search.arch_indices) == list(range(16))
    assert len(arch_seen) == 4 * 4 and len(set(arch_seen)) == 8  # 2 arch epochs over the 8 arch images


class StopAt(Hook):
    def __init__(self, n):
        self.n = n

    def after_step(self, trainer):
        if trainer.state.iteration == self.n:
            raise KeyboardInterrupt


def test_resume_equals_a_search_never_stopped(tmp_path):
    def cfg_for(name, **kw):
        cfg = search_cfg(tmp_path, out=name, iters=5, gumbel=True, band_interval=1, aux_skip=0.5, **kw)
        cfg.data.synthetic_train = 16  # 2 weight iterations per epoch: the cut lands mid-epoch
        cfg.train.val_interval = 10
        return cfg

    full = cfg_for("full")
    Trainer(full, build_hooks(full)).train()
    cut = cfg_for("cut")
    with pytest.raises(KeyboardInterrupt):
        Trainer(cut, build_hooks(cut) + [StopAt(3)]).train()
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["trainer"]["iteration"] == 2
    resumed = cfg_for("cut")
    resumed.train.resume = "auto"
    Trainer(resumed, build_hooks(resumed)).train()
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    arch_a, arch_b = arch_of(a["model"]), arch_of(b["model"])
    assert arch_a and all(torch.equal(arch_a[k], arch_b[k]) for k in arch_a)
    assert a["hooks"]["search"] == b["hooks"]["search"]  # lambdas, arch position, tau
    ea, eb = (a["hook_optimizers"]["search/arch"]["state"], b["hook_optimizers"]["search/arch"]["state"])
    assert all(torch.equal(ea[i]["exp_avg"], eb[i]["exp_avg"]) for i in ea)
    logs = [[json.loads(x) for x in (tmp_path / d / "search_log.jsonl").read_text().splitlines()] for d in ("full", "cut")]
    assert logs[0] == logs[1]  # no duplicated records after the resume


def test_band_control_moves_lambda_the_right_way(tmp_path):
    assert band_update(1.0, 12.0, 10.0) == (2.0, "up")  # over budget: pull harder
    assert band_update(1.0, 5.0, 10.0) == (0.5, "down")  # budget left unused: pull less
    assert band_update(1.0, 9.5, 10.0) == (1.0, "in")
    assert band_update(1.0, 9.5, 10.0, band=(0.96, 1.0), factor=4.0) == (0.25, "down")
    e = torch.tensor(12.0, requires_grad=True)
    assert latency_penalty(e, 10.0).item() == pytest.approx(1.2)
    assert latency_penalty(e, 10.0, "hinge").item() == pytest.approx(0.2)
    assert latency_penalty(torch.tensor(8.0), 10.0, "hinge").item() == 0.0
    # in a run: a budget far above anything the space reaches lowers lambda at every check
    cfg = search_cfg(tmp_path, iters=2, budget=1000.0)
    hooks = build_hooks(cfg)
    Trainer(cfg, hooks).train()
    bands = [json.loads(x) for x in (tmp_path / "run" / "search_log.jsonl").read_text().splitlines()]
    bands = [r for r in bands if r["event"] == "band"]
    assert [r["band_moves"]["torch-cpu"] for r in bands] == ["down", "down"]
    assert hooks[0].lambdas["torch-cpu"] == pytest.approx(0.25)
    # 1000 ms is beyond the dearest network of the tiny space: said at set-up and in the report
    assert hooks[0].unreachable["torch-cpu"] is not None and hooks[0].unreachable["torch-cpu"] < 900
    assert "torch-cpu: the budget is out of reach" in (tmp_path / "run" / "report.md").read_text()


def test_budget_below_the_smallest_network_is_a_clear_error(tmp_path):
    cfg = search_cfg(tmp_path, budget=0.01)
    with pytest.raises(ConfigError, match=r"search.budget.torch-cpu=0.01 ms is below the smallest latency .* \d+\.\d+ ms"):
        Trainer(cfg, build_hooks(cfg))


@pytest.mark.parametrize("platform,words", [("torch-cuda", "cannot be measured here"), ("tpu-x", "not a known platform")])
def test_platform_without_table_or_device_is_named(tmp_path, platform, words):
    cfg = search_cfg(tmp_path)
    cfg.search.budget, cfg.search.lut = {"torch-cpu": 10.0, platform: 5.0}, {"torch-cpu": cfg.search.lut["torch-cpu"]}
    if platform == "torch-cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is visible: torch-cuda is measurable here")
    with pytest.raises(ConfigError, match=f"search.budget.{platform}: platform '{platform}' has no latency table.*{words}"):
        build_hooks(cfg)


def test_bad_search_settings_are_clear_errors(tmp_path):
    cfg = search_cfg(tmp_path, lambda_ged=0.5)
    with pytest.raises(ConfigError, match="lambda_ged=0.5 needs a teacher"):
        build_hooks(cfg)
    cfg = search_cfg(tmp_path, lut={"onnxruntime-cpu": "x.json"})
    with pytest.raises(ConfigError, match="no budget for them"):
        build_hooks(cfg)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A tiny LR-ASPP teacher (one iteration: its structure is what matters here)."""
    out = tmp_path_factory.mktemp("teacher")
    cfg = Config()
    d = cfg.data
    d.name, d.synthetic_size, d.synthetic_train, d.synthetic_val, d.batch_size = "synthetic", [48, 64], 4, 2, 4
    cfg.model.name, cfg.model.width_mult = "lraspp_mobilenetv2", 0.25
    t = cfg.train
    t.iters, t.val_interval, t.ckpt_interval, t.progress, t.threads, t.out_dir = 1, 1, 1, False, 1, str(out)
    with core.torch_threads(1):
        Trainer(cfg).train()
    return out / "best.pt"


def test_search_and_graph_commands_in_process(tmp_path, teacher_ckpt, capsys):
    cfg = search_cfg(tmp_path, lambda_ged=0.5, ged_timeout=1.0, ged_stages="nominal", ged_family_cost=0.5)
    cfg.distill.teacher = str(teacher_ckpt)
    cfg.distill.pixel.weight = 1.0
    save_config(cfg, tmp_path / "search.yaml")
    main(["search", str(tmp_path / "search.yaml")])
    out = tmp_path / "run"
    printed = capsys.readouterr().out
    assert str(out / "genotype.json") in printed
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("arch/kd" in r and "arch/ged" in r for r in logged)
    final = [json.loads(x) for x in (out / "search_log.jsonl").read_text().splitlines()][-1]
    assert final["event"] == "validate" and 0 < final["expected_ged"] and final["ged"] <= final["correspondence_ged"]
    assert "GED of the derived network to the teacher" in (out / "report.md").read_text()

    main(["graph", str(out / "genotype.json"), "--teacher", str(teacher_ckpt), "--input", "3x48x64",
          "--num-classes", str(K), "--timeout", "1", "--png", str(tmp_path / "g.png")])
    printed = capsys.readouterr().out
    assert "GED to the teacher" in printed and "fixed-correspondence GED" in printed
    assert (tmp_path / "g.png").stat().st_size > 0

    with pytest.raises(SystemExit) as e:  # a config without a search space: exit 2 with a message
        main(["search", str(tmp_path / "search.yaml"), "search.space=null"])
    assert e.value.code == 2 and "sets no search space" in capsys.readouterr().err


DDP_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from segdistill.config import load_config
    from segdistill.engine import distributed as dist
    from segdistill.engine.hooks import build_hooks
    from segdistill.engine.trainer import Trainer

    cfg = load_config(sys.argv[1])
    hooks = build_hooks(cfg)
    dist.setup_distributed()
    trainer = Trainer(cfg, hooks)
    trainer.train()
    torch.save({n: p.detach() for n, p in trainer.model.named_arch_parameters()},
               f"{cfg.train.out_dir}/arch_rank{dist.rank()}.pt")
    hook = next(h for h in hooks if h.name == "search")
    genotype, info = hook.derive_final(trainer)  # derive_ops=perturb: scored on each rank's own batches
    torch.save({"genotype": genotype, "perturb": info["perturb"]}, f"{cfg.train.out_dir}/derived_rank{dist.rank()}.pt")
    dist.cleanup()
""")


@pytest.mark.slow
def test_two_gloo_processes_keep_alpha_identical(tmp_path):
    """... and rank ops by perturbation alike (search.derive_ops=perturb: the loss of each batch averaged over ranks)."""
    cfg = search_cfg(tmp_path, iters=3, gumbel=True, derive_ops="perturb", perturb_batches=1)
    cfg.data.synthetic_train, cfg.data.batch_size = 16, 2
    save_config(cfg, tmp_path / "cfg.yaml")
    (tmp_path / "ddp_search.py").write_text(DDP_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "ddp_search.py"), str(tmp_path / "cfg.yaml")],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (torch.load(tmp_path / "run" / f"arch_rank{r}.pt", weights_only=True) for r in (0, 1))
    init = ChainSupernet(ChainSpace((1, 3, 48, 64), K, stem_widths=(8, 8), base_widths=(16, 24, 32),
                                    width_ratios=(0.5, 1.0), layers=1, head_channels=16))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.allclose(a[k], p) for k, p in arch_of(init).items())  # and they did move
    d0, d1 = (torch.load(tmp_path / "run" / f"derived_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert d0 == d1 and d0["perturb"]["choices"] > 0


def test_the_search_warns_when_its_table_was_fitted_on_another_space(tmp_path, capsys):
    """A correction fitted on one space's networks (``latency fit --space``) mispredicts another's: the search says
    so, on screen and in report.md; one fitted on its own space, or on no space, is taken silently."""
    lut = fake_lut(tmp_path / "lut.json")
    table = json.loads(lut.read_text())
    for fitted, warned in (("lgcnet", True), ("chain", False), (None, False)):
        table["correction"] = {"model": "linear", "coef": {"raw": 1.0, "const": 0.0}, "space": fitted}
        lut.write_text(json.dumps(table))
        capsys.readouterr()
        cfg = search_cfg(tmp_path, out=f"run-{fitted}", iters=1)
        Trainer(cfg, build_hooks(cfg)).train()
        note = "correction was fitted on random networks of the 'lgcnet' space, and this search is in 'chain'"
        assert (note in capsys.readouterr().out) == warned
        assert (note in (tmp_path / f"run-{fitted}" / "report.md").read_text()) == warned


def test_the_search_says_which_device_its_latency_table_is_for(tmp_path, capsys):
    """Issue 13: a table built on another device is usable, but every latency figure says whose device it is for."""
    (tmp_path / "a").mkdir()
    here = search_cfg(tmp_path / "a", out="here", iters=1)
    Trainer(here, build_hooks(here)).train()
    assert "table measured on this device" in (tmp_path / "a" / "here" / "report.md").read_text()
    lut = tmp_path / "b" / "lut.json"
    lut.parent.mkdir()
    fake_lut(lut)
    table = json.loads(lut.read_text())
    table["device"] = {**table["device"], "cpu": "Some Other CPU @ 3.0GHz"}
    lut.write_text(json.dumps(table))
    capsys.readouterr()
    there = search_cfg(tmp_path / "b", out="there", iters=1)
    Trainer(there, build_hooks(there)).train()
    note = "table measured on ANOTHER device: 'Some Other CPU @ 3.0GHz'"
    assert note in capsys.readouterr().out
    assert note in (tmp_path / "b" / "there" / "report.md").read_text()


def test_latency_plot_has_a_panel_per_platform_and_needs_budgets(tmp_path):
    from PIL import Image

    from segdistill.search.hook import plot_search_latency

    def rec(it, event, platforms):
        return {"iter": it, "event": event, **{f"{k}/{p}": v for p in platforms for k, v in
                                                (("expected_ms", 12.0 - it / 10), ("predicted_ms", 5.0 + it / 10),
                                                 ("budget_ms", 10.0), ("lambda", 1.0 / (it + 1)))}}

    one = plot_search_latency([rec(i, "band", ["torch-cpu"]) for i in range(5)] + [rec(5, "validate", ["torch-cpu"])],
                              tmp_path / "one.png")
    two = [rec(i, "band", ["torch-cpu", "onnxruntime-cpu"]) for i in range(5)]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in two))
    two = plot_search_latency(tmp_path / "log.jsonl", tmp_path / "two.png", band=(0.8, 1.0))
    assert Image.open(two).size[1] > 1.6 * Image.open(one).size[1]  # one panel per platform
    with pytest.raises(ValueError, match="no latency records"):
        plot_search_latency([{"iter": 1, "event": "validate", "val_miou": 0.1}], tmp_path / "none.png")


def test_aux_skip_decays_linearly_from_the_warm_up_to_zero(tmp_path):
    cfg = search_cfg(tmp_path, iters=10, warmup_iters=2, aux_skip=0.5)
    hook = build_hooks(cfg)[0]
    assert [hook._aux_at(i) for i in (0, 2, 6, 10)] == pytest.approx([0.5, 0.5, 0.25, 0.0])
    trainer = Trainer(cfg, [hook])
    assert trainer.model.aux_skip == 0.5
    trainer.train()
    assert trainer.model.aux_skip == 0.0  # gone by the end: the supernet the search derives from has none
