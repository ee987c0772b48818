"""EKD under DDP: 2 Gloo processes (torchrun, CPU) train a tiny DDNN with EKD, one DDP forward per step.

Checked: the run finishes (3 iterations, the sandwich rule drawing different sub-nets at different steps, so a sub-net's
blocks sit idle at some steps); the parameters are identical on both ranks afterwards; the first step's gradient, as
DDP averaged it, equals the mean over ranks of each rank's own EKD gradient (the same step replayed without DDP on a
copy of the model: same batch, same RNG state); checkpoints hold the plain DDNN's keys.

Why not the losses of a 1-process run with the same global batch: BatchNorm normalises with each process's own batch
statistics, so a 2 x 2 batch is not a batch of 4 (the existing torchrun tests check finishing and identical state too).

Run as a script, this file is one rank's worker: ``python test_ekd_ddp.py CONFIG OUT_DIR`` under torchrun.
"""
import copy
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the worker runs as a plain script
    sys.path.insert(0, str(ROOT))

from segdistill.config import Config, load_config, save_config  # noqa: E402
from segdistill.dynamic.ekd import EKDHook, EKDStep  # noqa: E402
from segdistill.engine import distributed as dist  # noqa: E402
from segdistill.engine.checkpoint import build_from_checkpoint, load_checkpoint  # noqa: E402
from segdistill.engine.hooks import build_hooks  # noqa: E402
from segdistill.engine.trainer import Hook, Trainer  # noqa: E402
from segdistill.models import build_model  # noqa: E402

DEPTHS = {"r10": [1, 1, 1, 1], "r18": [2, 2, 2, 2], "r26": [2, 3, 4, 3], "r34": [3, 4, 6, 3]}


def ddp_cfg(out_dir) -> Config:
    cfg = Config()
    d = cfg.data
    d.name, d.synthetic_size, d.synthetic_train, d.synthetic_val, d.batch_size = "synthetic", [32, 48], 8, 2, 2
    d.crop_size, d.scale_range = [32, 48], [0.75, 1.25]
    cfg.model.name, cfg.model.width_mult, cfg.model.aux = "ddnn_deeplabv3_resnet34", 0.125, True
    cfg.model.arch = {"depths": DEPTHS}
    cfg.optim.lr = 0.02
    t = cfg.train
    t.iters, t.val_interval, t.ckpt_interval, t.log_interval, t.progress, t.threads = 3, 3, 3, 1, False, 1
    t.out_dir = str(out_dir)
    cfg.ekd.enabled, cfg.ekd.subnets, cfg.ekd.num_random = True, "sandwich", 1
    return cfg


class GradCheck(Hook):
    """First step: keep a copy of the model, the batch and the RNG state before the forward (``forward`` returns None,
    so the EKD hook after it runs the step); after DDP's backward, replay the step on the copy without DDP and
    compare DDP's gradient with the mean over ranks of the replayed (local) ones."""

    name = "grad_check"

    def __init__(self):
        self.result = None

    def forward(self, trainer, images, masks):
        if trainer.state.iteration == 0:
            self.copy, self.rng = copy.deepcopy(trainer.model), torch.get_rng_state()
            self.images, self.masks = images.clone(), masks.clone()
        return None

    def before_step(self, trainer):
        if trainer.state.iteration != 0:
            return
        rng_now = torch.get_rng_state()
        torch.set_rng_state(self.rng)  # the same dropout masks as the DDP forward
        fake = SimpleNamespace(ddp_model=EKDStep(self.copy), criterion=trainer.criterion, state=trainer.state)
        _, losses = trainer.hook("ekd").forward(fake, self.images, self.masks)
        sum(losses.values()).backward()
        torch.set_rng_state(rng_now)
        local = {n: p.grad.detach().clone() for n, p in self.copy.named_parameters()}
        mean = {n: dist.all_reduce_sum(g.clone()) / dist.world_size() for n, g in local.items()}
        synced = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()}
        scale = max(g.abs().max().item() for g in mean.values())
        self.result = {
            "params_without_grad": sorted(set(mean) - set(synced)),
            "ddp_vs_mean_of_local": max((synced[n] - mean[n]).abs().max().item() for n in synced) / scale,
            "local_vs_mean": max((local[n] - mean[n]).abs().max().item() for n in local) / scale,
        }


def worker(cfg_path: str, out_dir: str) -> None:
    cfg = load_config(cfg_path)
    dist.setup_distributed()
    assert dist.is_dist() and dist.world_size() == 2
    check = GradCheck()
    trainer = Trainer(cfg, [check] + build_hooks(cfg))
    assert isinstance(trainer.ddp_model, torch.nn.parallel.DistributedDataParallel)
    assert isinstance(trainer.ddp_model.module, EKDStep) and trainer.ddp_model.module.model is trainer.model
    trainer.train()
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    torch.save(params, Path(out_dir) / f"params_rank{dist.rank()}.pt")
    (Path(out_dir) / f"grad_rank{dist.rank()}.json").write_text(json.dumps(check.result))
    dist.barrier()
    dist.cleanup()


@pytest.mark.slow  # 26 s alone, ~60 s on 2 busy cores: torchrun, 2 gloo processes
def test_ekd_trains_under_ddp_with_two_gloo_processes(tmp_path):
    cfg = ddp_cfg(tmp_path / "run")
    torch.manual_seed(0)
    plain = build_model(cfg.model.name, 8, width_mult=0.125, aux=True, depths=DEPTHS)  # the synthetic classes
    hook = EKDHook(cfg)
    hook.ddnn = plain
    drawn = [hook.subnets(i) for i in range(cfg.train.iters)]
    assert {d for s in drawn for d in s} == {"r10", "r18", "r26"}, drawn  # some blocks idle at some steps
    save_config(cfg, tmp_path / "cfg.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(Path(__file__)),
         str(tmp_path / "cfg.yaml"), str(tmp_path)],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("EKD: full net r34") == 1  # rank 0 prints

    run = tmp_path / "run"
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    assert [r["iter"] for r in recs] == [1, 2, 3]  # one line per step (the mean over ranks)
    for r, subnets in zip(recs, drawn):
        assert sorted(k for k in r if k.startswith("task@")) == [f"task@{d}" for d in subnets]
        assert all(r[k] == r[k] and r[k] > 0 for k in ("loss", "ce", "aux", *(f"kl@{d}" for d in subnets)))

    p0, p1 = (torch.load(tmp_path / f"params_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert p0.keys() == p1.keys() and all(torch.equal(p0[k], p1[k]) for k in p0)  # DDP kept the ranks in step

    for r in (0, 1):
        g = json.loads((tmp_path / f"grad_rank{r}.json").read_text())
        assert g["params_without_grad"] == []
        assert g["ddp_vs_mean_of_local"] < 1e-5, g  # DDP's gradient = the mean of the ranks' EKD gradients
        assert g["local_vs_mean"] > 1e-3, g  # and the ranks' own gradients differ (other data): the check can fail

    # the trained and saved model is the plain DDNN: its own keys, no wrapper prefix; it rebuilds and runs every depth
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(run / name)
        assert list(state["model"]) == list(plain.state_dict())
        assert all(torch.equal(state["model"][k], p0[k]) for k in p0)  # rank 0's weights
    model, meta = build_from_checkpoint(run / "best.pt")
    assert meta["model"]["num_classes"] == 8 and "miou@r10" in meta["metrics"]
    for d in DEPTHS:
        with torch.no_grad():
            assert model.set_depth(d)(torch.randn(1, 3, 32, 48)).logits.shape[:2] == (1, 8)


def test_sync_bn_is_refused_for_ekd(tmp_path):
    """SyncBatchNorm (what model.sync_bn gives on GPUs) would replace the per-depth BN layers: a clear error."""
    from segdistill.errors import ConfigError

    class SyncBN(Hook):  # the trainer converts on CUDA only; convert here, as it would
        def wrap_model(self, trainer, model):
            return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)

    cfg = ddp_cfg(tmp_path / "run")
    with pytest.raises(ConfigError, match="model.sync_bn=false"):
        Trainer(cfg, [SyncBN()] + build_hooks(cfg))


if __name__ == "__main__":
    worker(*sys.argv[1:3])
