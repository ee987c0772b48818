"""The trainer: exact resume, divergence, atomic and safe checkpoints, clear errors for bad checkpoints."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from segdistill.config import Config, save_config
from segdistill.engine.checkpoint import build_from_checkpoint, load_checkpoint, save_checkpoint
from segdistill.engine.trainer import Hook, Trainer, poly_lr_lambda
from segdistill.errors import CheckpointError, DivergenceError


def tiny_cfg(out_dir, **train) -> Config:
    cfg = Config()
    cfg.data.name = "synthetic"
    cfg.data.synthetic_size = [32, 48]
    cfg.data.synthetic_train = 12  # 3 iterations per epoch at batch 4: resumes land mid-epoch
    cfg.data.synthetic_val = 3
    cfg.data.batch_size = 4
    cfg.data.crop_size = [32, 48]
    cfg.data.scale_range = [0.75, 1.25]
    cfg.data.jitter = 0.2
    cfg.model.name = "fcn_resnet18"
    cfg.model.width_mult = 0.25
    cfg.optim.lr = 0.01
    cfg.optim.warmup_iters = 2
    cfg.train.iters = 8
    cfg.train.val_interval = 4
    cfg.train.ckpt_interval = 2
    cfg.train.log_interval = 1
    cfg.train.progress = False
    cfg.train.out_dir = str(out_dir)
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def losses_by_iter(run_dir):
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["iter"]] = rec["loss"]
    return out


class StopAt(Hook):
    """Simulates a kill right after iteration ``n`` (before any checkpoint of that iteration)."""

    def __init__(self, n):
        self.n = n

    def after_step(self, trainer):
        if trainer.state.iteration == self.n:
            raise KeyboardInterrupt


def test_resume_auto_without_a_checkpoint_starts_a_new_run(tmp_path, capsys):
    """`train.resume=auto` is how resumable benchmarks start *and* continue: an empty folder is a new run."""
    fresh = tmp_path / "fresh"
    Trainer(tiny_cfg(fresh, iters=2, val_interval=2, resume="auto")).train()
    assert "no " in capsys.readouterr().out and sorted(losses_by_iter(fresh)) == [1, 2]
    assert load_checkpoint(fresh / "last.pt")["trainer"]["iteration"] == 2
    with pytest.raises(CheckpointError, match="not found"):  # an explicit path still has to exist
        Trainer(tiny_cfg(tmp_path / "other", resume=str(tmp_path / "missing.pt")))


def test_resume_repeats_the_uninterrupted_losses(tmp_path):
    full = tmp_path / "full"
    Trainer(tiny_cfg(full)).train()
    ref = losses_by_iter(full)
    assert sorted(ref) == list(range(1, 9))

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_cfg(cut), hooks=[StopAt(5)]).train()  # last.pt holds iteration 4 (mid-epoch 1)
    assert load_checkpoint(cut / "last.pt")["trainer"]["iteration"] == 4
    Trainer(tiny_cfg(cut, resume="auto")).train()
    got = losses_by_iter(cut)
    assert got == ref  # bit-identical, every iteration, no duplicated log lines
    a = load_checkpoint(full / "last.pt")["model"]
    b = load_checkpoint(cut / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


class Slow(Hook):
    def after_step(self, trainer):
        time.sleep(0.2)


def test_wall_time_counts_the_kept_work_across_a_resume(tmp_path):
    """state.wall_s: the training kept so far. A kill loses the work after the last checkpoint, and that is not
    counted; the resumed run adds its own time; a checkpoint from before the field gives NaN, not a wrong figure."""
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_cfg(tmp_path), hooks=[Slow(), StopAt(5)]).train()  # steps 1-5 slept, last.pt at 4
    w4 = load_checkpoint(tmp_path / "last.pt")["trainer"]["wall_s"]
    assert w4 >= 4 * 0.2
    t0 = time.perf_counter()
    out = Trainer(tiny_cfg(tmp_path, resume="auto"), hooks=[Slow()]).train()
    second = time.perf_counter() - t0
    assert w4 + 4 * 0.2 <= out["wall_s"] <= w4 + second  # step 5 of the first run (lost) is not in it
    assert load_checkpoint(tmp_path / "last.pt")["trainer"]["wall_s"] == pytest.approx(out["wall_s"], abs=0.5)
    vals = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines() if "val/miou" in ln]
    assert [v["iter"] for v in vals] == [4, 8] and vals[0]["wall_s"] < vals[1]["wall_s"]

    state = load_checkpoint(tmp_path / "last.pt")
    del state["trainer"]["wall_s"]
    state["trainer"]["iteration"] = 6
    save_checkpoint(state, tmp_path / "last.pt")
    out = Trainer(tiny_cfg(tmp_path, resume="auto")).train()
    assert out["iteration"] == 8 and out["wall_s"] != out["wall_s"]  # NaN: unknown, not undercounted


def test_resume_after_sigkill(tmp_path):
    """A real kill -9 at an arbitrary moment, then `train.resume=auto`: same losses as a run never stopped."""
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    for d in (ref_dir, cut_dir):
        d.mkdir()
        save_config(tiny_cfg(d, iters=10, ckpt_interval=1, val_interval=100, threads=1), d / "cfg.yaml")
    cmd = [sys.executable, "-m", "segdistill", "train"]
    subprocess.run(cmd + [str(ref_dir / "cfg.yaml")], check=True, capture_output=True)
    proc = subprocess.Popen(cmd + [str(cut_dir / "cfg.yaml")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (cut_dir / "last.pt").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    it = load_checkpoint(cut_dir / "last.pt")["trainer"]["iteration"]  # loads: the write was atomic
    assert 1 <= it <= 10
    subprocess.run(cmd + [str(cut_dir / "cfg.yaml"), "train.resume=auto"], check=True, capture_output=True)
    assert losses_by_iter(cut_dir) == losses_by_iter(ref_dir)


class NanAt(Hook):
    def __init__(self, n):
        self.n = n

    def losses(self, trainer, images, masks, out):
        bad = trainer.state.iteration + 1 == self.n
        return {"probe": out.logits.sum() * (float("nan") if bad else 0.0)}


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_cfg(tmp_path, iters=6)
    with pytest.raises(DivergenceError, match=r"iteration 4.*last\.pt"):
        Trainer(cfg, hooks=[NanAt(4)]).train()
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["trainer"]["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_damaged_checkpoints_are_refused(tmp_path):
    Trainer(tiny_cfg(tmp_path, iters=2)).train()
    last = tmp_path / "last.pt"
    data = last.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pt").write_bytes(os.urandom(1000))
    for name in ("truncated.pt", "garbage.pt"):
        with pytest.raises(CheckpointError, match=name):
            Trainer(tiny_cfg(tmp_path, iters=4, resume=str(tmp_path / name)))
    with pytest.raises(CheckpointError, match="not found"):
        Trainer(tiny_cfg(tmp_path, iters=4, resume=str(tmp_path / "nope.pt")))


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_never_runs_code(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"format": "segdistill", "model": {}, "x": Evil()}, p)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(p)


def test_mismatched_checkpoint(tmp_path):
    Trainer(tiny_cfg(tmp_path, iters=2)).train()
    other = tiny_cfg(tmp_path, iters=4, resume="auto")
    other.model.name = "fcn_resnet34"
    with pytest.raises(CheckpointError, match="fcn_resnet18"):
        Trainer(other)
    state = load_checkpoint(tmp_path / "last.pt")
    state["meta"]["model"]["num_classes"] = 3  # as if trained on another dataset
    save_checkpoint(state, tmp_path / "other_classes.pt")
    with pytest.raises(CheckpointError, match="3 classes"):
        Trainer(tiny_cfg(tmp_path, iters=4, resume=str(tmp_path / "other_classes.pt")))


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "ck.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}}, p)
    with pytest.raises(Exception):
        save_checkpoint({"model": {"w": torch.zeros(2)}, "bad": lambda: 0}, p)
    assert torch.equal(load_checkpoint(p)["model"]["w"], torch.ones(2))
    assert not (tmp_path / "ck.pt.tmp").exists()


def test_best_checkpoint_is_model_only_and_rebuilds(tmp_path):
    Trainer(tiny_cfg(tmp_path, iters=4)).train()
    state = load_checkpoint(tmp_path / "best.pt")
    assert "optimizer" not in state and state["meta"]["model"]["name"] == "fcn_resnet18"
    model, meta = build_from_checkpoint(tmp_path / "best.pt")
    assert not model.training and meta["data"]["ignore_index"] == 255
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "tb").is_dir()


def test_poly_schedule_with_warmup():
    f = poly_lr_lambda(100, 10, 0.1, 0.9, 0.0)
    assert f(0) == pytest.approx(0.1) and f(5) == pytest.approx(0.55)
    assert f(10) == pytest.approx((1 - 0.1) ** 0.9) and f(100) == 0.0


def test_torchrun_two_gloo_processes_train(tmp_path):
    """DDP training under torchrun on CPU: 2 gloo processes, one log, one set of checkpoints."""
    cfg = tiny_cfg(tmp_path / "run", iters=4, val_interval=2, ckpt_interval=2, threads=1)
    cfg.data.batch_size = 2
    cfg.model.sync_bn = True  # GPU-only in torch: falls back to per-process BN with a warning on CPU
    save_config(cfg, tmp_path / "cfg.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "segdistill",
         "train", str(tmp_path / "cfg.yaml")],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done: best val mIoU") == 1  # printed by rank 0 only
    assert sorted(losses_by_iter(tmp_path / "run")) == [1, 2, 3, 4]  # one line per iteration, not one per rank
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["trainer"]["iteration"] == 4


def test_two_trainings_never_write_one_run_folder(tmp_path):
    """The run folder is locked while a training writes it: a second one gets a clear error naming the folder and
    the process; once the first is done (or was interrupted) the folder is free again."""
    from segdistill.engine.trainer import out_dir_lock
    from segdistill.errors import ConfigError

    out = tmp_path / "run"
    cfg = tiny_cfg(out, iters=2, val_interval=2)
    with out_dir_lock(out):  # another training holds the folder
        with pytest.raises(ConfigError, match=f"being written by another training \\(process {os.getpid()}"):
            Trainer(cfg).train()
        assert not (out / "last.pt").exists()  # nothing written
    assert Trainer(cfg).train()["iteration"] == 2  # free again
    with out_dir_lock(out):
        pass  # and released after a finished training
