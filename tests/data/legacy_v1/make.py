"""Writes the legacy_v1 checkpoints (run at commit 47066b3; see README.md)."""
import shutil
import sys
from pathlib import Path

sys.path.insert(0, "tests")
from test_distill import tiny_cfg

from segdistill.distill.hook import DistillHook
from segdistill.engine.trainer import Trainer

out = Path(sys.argv[1])
shutil.rmtree(out, ignore_errors=True)
cfg = tiny_cfg(out / "teacher", iters=2)
cfg.model.name, cfg.model.width_mult = "fcn_resnet18", 0.125
Trainer(cfg).train()
cfg = tiny_cfg(out / "student", iters=2, pixel=1.0, cwd_feat=1.0, holistic=0.1, hetero=1.0)
cfg.model.width_mult = 0.125
cfg.distill.holistic.widths = [4, 4, 4, 4]
cfg.train.out_dir = str(out / "student")
cfg.distill.teacher = str(out / "teacher" / "best.pt")
Trainer(cfg, hooks=[DistillHook(cfg)]).train()
