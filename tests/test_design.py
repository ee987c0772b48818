"""The open design: architectures as data, the Hook API's points, hook state by name, old checkpoints, latency keys."""
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from segdistill.cli import main as cli_main
from segdistill.config import Config, load_config
from segdistill.engine.checkpoint import build_from_checkpoint, load_checkpoint, model_meta
from segdistill.engine.hooks import build_hooks
from segdistill.engine.trainer import Hook, Trainer
from segdistill.errors import CheckpointError, ConfigError
from segdistill.models import SegOutput, build_model

LEGACY = Path(__file__).parent / "data" / "legacy_v1"
TINY_GENOTYPE = {
    "format": "segdistill-genotype", "version": 1, "space": "chain", "input": [1, 3, 48, 64], "stem_widths": [8, 8],
    "base_widths": [16, 16, 24], "head_channels": 16, "top_k": 1,
    "stages": [
        {"width": 16, "down": "dwsep_3x3", "layers": [{"op": "conv_3x3", "inputs": [0]}], "output": [1]},
        {"width": 16, "down": "mbconv_k3_e3", "layers": [], "output": [0]},
        {"width": 24, "down": "zoomconv_3x3", "layers": [{"op": "dilconv_3x3_d2", "inputs": [0]}], "output": [1]},
    ],
}


def tiny_cfg(out_dir, iters=2, **model) -> Config:
    cfg = Config()
    d = cfg.data
    d.name, d.synthetic_size, d.synthetic_train, d.synthetic_val, d.batch_size = "synthetic", [48, 64], 8, 2, 4
    d.crop_size = [48, 64]
    cfg.model.name, cfg.model.width_mult = "fcn_resnet18", 0.125
    for k, v in model.items():
        setattr(cfg.model, k, v)
    t = cfg.train
    t.iters, t.val_interval, t.ckpt_interval, t.log_interval, t.progress, t.threads = iters, iters, iters, 1, False, 1
    t.out_dir = str(out_dir)
    return cfg


def logged(run_dir):
    return [json.loads(ln) for ln in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------- architectures as data
def test_arch_reaches_the_builder_and_comes_back_from_best_pt(tmp_path):
    geno = tmp_path / "genotype.json"
    geno.write_text(json.dumps(TINY_GENOTYPE))
    cfg = load_config(None, [f"model.arch.genotype={geno}"])
    assert cfg.model.arch == {"genotype": str(geno)}
    cfg = tiny_cfg(tmp_path / "run")
    cfg.model.name, cfg.model.width_mult, cfg.model.arch = "searched", 1.0, {"genotype": str(geno)}
    Trainer(cfg).train()
    best = tmp_path / "run" / "best.pt"
    meta = load_checkpoint(best)["meta"]["model"]
    assert meta["name"] == "searched" and meta["arch"]["genotype"]["stages"] == TINY_GENOTYPE["stages"]
    geno.unlink()  # the checkpoint holds the genotype itself, not the path
    model, _ = build_from_checkpoint(best)
    ref = build_model("searched", model.num_classes, genotype=TINY_GENOTYPE)
    assert [tuple(p.shape) for p in model.parameters()] == [tuple(p.shape) for p in ref.parameters()]
    assert isinstance(model(torch.randn(1, 3, 48, 64)), SegOutput)
    cli_main(["eval", str(best), "--out", str(tmp_path / "eval.json")])
    assert 0.0 <= json.loads((tmp_path / "eval.json").read_text())["miou"] <= 1.0
    cli_main(["export", str(best), "--input", "3x48x64", "--out", str(tmp_path / "m.onnx")])
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_resume_refuses_another_architecture(tmp_path):
    cfg = tiny_cfg(tmp_path, aux=False)
    cfg.model.name, cfg.model.width_mult, cfg.model.arch = "segformer_mitb0", 0.25, {"drop_path_rate": 0.0}
    Trainer(cfg).train()
    cfg.model.arch = {"drop_path_rate": 0.2}  # same shapes, another architecture: must not load silently
    cfg.train.iters, cfg.train.resume = 4, "auto"
    with pytest.raises(CheckpointError, match="drop_path_rate"):
        Trainer(cfg)


def test_open_mappings_merge_per_key_and_null_removes_one():
    cfg = load_config(None, ["model.arch.depths=[1, 2]", "model.arch.x=3", "model.arch.x=null",
                             "search.budget.torch-cpu=20", "search.budget.onnxruntime-cpu=9", "search.budget.torch-cpu=null"])
    assert cfg.model.arch == {"depths": [1, 2]} and cfg.search.budget == {"onnxruntime-cpu": 9}


def test_model_meta_records_arch_and_old_meta_rebuilds():
    model = build_model("segformer_mitb0", 3, width_mult=0.25, drop_path_rate=0.0)
    assert model_meta(model)["arch"] == {"drop_path_rate": 0.0}
    assert model_meta(build_model("fcn_resnet18", 3, width_mult=0.25))["arch"] == {}


# ---------------------------------------------------------------------------- hook points
class Scaled(nn.Module):
    """A wrapper a hook puts around the model: a learned scale on the logits (same output contract)."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.scale = nn.Parameter(torch.ones(()))
        self.model_name, self.num_classes = model.model_name, model.num_classes

    def forward(self, x):
        out = self.inner(x)
        return SegOutput(out.logits * self.scale, out.features, out.aux_logits)


class WrapAndTwoForwards(Hook):
    """Wraps the model, runs it twice per step (the image and its flip), declares its own parameter group,
    and picks "best" by a score of its own."""

    name = "probe"

    def __init__(self):
        self.forwards = 0
        self.scores = []

    def wrap_model(self, trainer, model):
        return Scaled(model)

    def param_groups(self):
        return [{"params": [self.trainer_model.scale], "lr": 0.5, "weight_decay": 0.0}]

    def setup(self, trainer):
        self.trainer_model = trainer.model

    def forward(self, trainer, images, masks):
        out = trainer.ddp_model(images)
        flipped = trainer.ddp_model(images.flip(-1))
        self.forwards += 2
        losses = trainer.criterion(out, masks)
        losses["ce_flip"] = trainer.criterion(flipped, masks.flip(-1))["ce"]
        return out, losses

    def on_validate(self, trainer, metrics):
        metrics["probe_score"] = -trainer.state.iteration  # earlier is better: best.pt stays the first
        metrics["score"] = metrics["probe_score"]
        self.scores.append(metrics["score"])
        return metrics


def test_hook_wraps_the_model_runs_two_forwards_and_chooses_best(tmp_path):
    cfg = tiny_cfg(tmp_path, iters=4)
    cfg.train.val_interval = 2
    hook = WrapAndTwoForwards()
    trainer = Trainer(cfg, [hook])
    assert isinstance(trainer.model, Scaled) and trainer.hook("probe") is hook
    groups = trainer.optimizer.param_groups
    assert [g["initial_lr"] for g in groups if g["params"][0] is trainer.model.scale] == [0.5]  # its own lr
    assert sum(p is trainer.model.scale for g in groups for p in g["params"]) == 1  # in one group only
    trainer.train()
    assert hook.forwards == 8
    recs = logged(tmp_path)
    assert all("ce_flip" in r for r in recs if "loss" in r)
    assert [r["val/probe_score"] for r in recs if "val/probe_score" in r] == [-2, -4]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["meta"]["iteration"] == 2  # chosen by the hook's score, not by mIoU
    assert "inner.head.classifier.weight" in best["model"] and "scale" in best["model"]
    with pytest.raises(KeyError, match="no hook 'search'"):
        trainer.hook("search")


def test_hook_names_are_unique_and_state_is_keyed_by_name(tmp_path):
    class A(Hook):
        def state_dict(self):
            return {"x": torch.tensor(3)}

    assert A.name == "a"
    with pytest.raises(ConfigError, match="unique"):
        Trainer(tiny_cfg(tmp_path), [A(), A()])
    cfg = tiny_cfg(tmp_path)
    Trainer(cfg, [A()]).train()
    assert load_checkpoint(tmp_path / "last.pt")["hooks"] == {"a": {"x": torch.tensor(3)}}
    cfg.train.iters, cfg.train.resume = 4, "auto"
    with pytest.raises(CheckpointError, match=r"hook\(s\) \['a'\]"):
        Trainer(cfg, [])  # a run resumed without the hook whose state it holds


def test_build_hooks_is_driven_by_the_config(tmp_path):
    cfg = tiny_cfg(tmp_path)
    assert [h.name for h in build_hooks(cfg)] == []
    cfg.distill.teacher = str(LEGACY / "teacher.pt")
    assert [h.name for h in build_hooks(cfg)] == ["distill"]


# ---------------------------------------------------------------------------- checkpoints written before the change
def test_a_checkpoint_written_before_the_change_still_resumes(tmp_path):
    out = tmp_path / "student"
    out.mkdir()
    shutil.copy(LEGACY / "student_last.pt", out / "last.pt")
    old = load_checkpoint(out / "last.pt")
    assert isinstance(old["hooks"], list)  # the old, positional layout
    cfg = tiny_cfg(out, iters=4)
    cfg.data.crop_size, cfg.data.scale_range = [48, 64], [0.75, 1.25]
    cfg.model.name, cfg.model.width_mult = "lraspp_mobilenetv2", 0.125
    cfg.optim.lr = 0.02
    cfg.train.val_interval, cfg.train.ckpt_interval, cfg.train.resume = 4, 2, "auto"
    for term, w in (("pixel", 1.0), ("cwd_feat", 1.0), ("holistic", 0.1), ("hetero", 1.0)):
        getattr(cfg.distill, term).weight = w
    cfg.distill.holistic.widths = [4, 4, 4, 4]
    cfg.distill.teacher = str(LEGACY / "teacher.pt")
    trainer = Trainer(cfg, build_hooks(cfg))
    assert trainer.state.iteration == 2
    d = trainer.hook("distill").distiller
    saved = old["hooks"][0]["discriminator"]
    now = d.terms["holistic"].gan.state_dict()
    assert all(torch.equal(saved[k], now[k]) for k in saved)
    trainer.train()
    new = load_checkpoint(out / "last.pt")
    assert new["trainer"]["iteration"] == 4 and set(new["hooks"]) == {"distill"}


# ---------------------------------------------------------------------------- latency keys per configuration
def test_two_architectures_of_one_model_never_share_a_cost_key():
    from segdistill.latency.zoo import decompose_model, model_spec, parse_model_spec

    a = decompose_model("segformer_mitb0", (1, 3, 32, 32), 3, 0.25, arch={"drop_path_rate": 0.0})
    b = decompose_model("segformer_mitb0", (1, 3, 32, 32), 3, 0.25, arch={"drop_path_rate": 0.2})
    fixed_a = {k for k in a.net.keys() if k.startswith("fixed:")}
    fixed_b = {k for k in b.net.keys() if k.startswith("fixed:")}
    assert fixed_a and fixed_b and not fixed_a & fixed_b
    spec = model_spec("segformer_mitb0", 3, 0.25, None, (32, 32), {"drop_path_rate": 0.2})
    assert parse_model_spec(spec)["arch"] == {"drop_path_rate": 0.2}
    assert model_spec("fcn_resnet18", 3, 0.25, None, (32, 32)) == "fcn_resnet18|w0.25|osd|k3|32x32"


def test_a_model_built_from_library_blocks_lists_them_itself():
    from segdistill.latency.zoo import decompose_model
    from segdistill.search.genotype import genotype_netspec

    dec = decompose_model("searched", (1, 3, 48, 64), 5, arch={"genotype": TINY_GENOTYPE})
    assert not dec.parts  # no fixed part: every block is a library block
    assert dec.net.keys() == genotype_netspec(TINY_GENOTYPE, (1, 3, 48, 64), 5).keys()
