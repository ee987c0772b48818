"""The Distiller and `segdistill distill`: frozen teacher, training-only parts, checkpoints, presets, resume, errors."""
import json
import subprocess
import sys

import pytest
import torch

from segdistill.config import Config, load_config, save_config
from segdistill.distill.distiller import Distiller, load_teacher
from segdistill.distill.hook import DistillHook
from segdistill.engine.checkpoint import build_from_checkpoint, load_checkpoint, save_checkpoint
from segdistill.engine.trainer import Trainer
from segdistill.errors import CheckpointError, ConfigError
from segdistill.models import build_model

ALL_TERMS = {"pixel": 1.0, "cwd": 1.0, "cwd_feat": 1.0, "pairwise": 1.0, "holistic": 0.1, "icsd": 100.0, "hetero": 1.0}


def tiny_cfg(out_dir, iters=4, **terms) -> Config:
    cfg = Config()
    d = cfg.data
    d.name, d.synthetic_size, d.synthetic_train, d.synthetic_val, d.batch_size = "synthetic", [48, 64], 8, 2, 4
    d.crop_size, d.scale_range = [48, 64], [0.75, 1.25]
    cfg.model.name, cfg.model.width_mult = "lraspp_mobilenetv2", 0.25
    cfg.optim.lr = 0.02
    t = cfg.train
    t.iters, t.val_interval, t.ckpt_interval, t.log_interval, t.progress, t.threads = iters, iters, 2, 1, False, 1
    t.out_dir = str(out_dir)
    for name, w in terms.items():
        getattr(cfg.distill, name).weight = w
    return cfg


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A small DeepLabV3+-ResNet-18 teacher trained for a few iterations on the synthetic data."""
    out = tmp_path_factory.mktemp("teacher")
    cfg = tiny_cfg(out, iters=16)
    cfg.optim.lr = 0.05
    cfg.model.name, cfg.model.width_mult, cfg.model.aux = "deeplabv3plus_resnet18", 0.25, True
    Trainer(cfg).train()
    return out / "best.pt"


def distill(cfg, teacher):
    cfg.distill.teacher = str(teacher)
    hook = DistillHook(cfg)
    trainer = Trainer(cfg, hooks=[hook])
    return trainer, hook, trainer.train()


def hook_state(full: dict) -> dict:
    """The DistillHook's state in a full checkpoint (hook states keyed by name; a list in older checkpoints)."""
    hooks = full["hooks"]
    return hooks["distill"] if isinstance(hooks, dict) else hooks[0]


def logged(run_dir):
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]


def test_every_term_runs_and_the_teacher_stays_frozen(tmp_path, teacher_ckpt):
    cfg = tiny_cfg(tmp_path / "run", **ALL_TERMS)
    teacher_before = load_checkpoint(teacher_ckpt)["model"]
    trainer, hook, _ = distill(cfg, teacher_ckpt)
    teacher_after = hook.distiller.teacher.state_dict()
    assert not hook.distiller.teacher.training
    for k, v in teacher_before.items():  # weights and BatchNorm running statistics untouched
        if not k.startswith("aux_head."):
            assert torch.equal(v, teacher_after[k]), k
    rec = logged(tmp_path / "run")[-1]
    for key in ("ce", "kd_pixel", "kd_cwd", "kd_cwd_feat", "kd_pairwise", "kd_holistic", "kd_icsd", "kd_hetero",
                "kd_hetero_logit", "hetero_proj_ce", "d_loss"):
        assert key in rec and rec[key] == rec[key], key  # logged and finite
    # the discriminator has its own optimizer, outside the student's
    d_params = {id(p) for p in hook.distiller.terms["holistic"].gan.parameters()}
    main_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert d_params and not d_params & main_params
    assert {id(p) for p in hook.distiller.part_parameters()} <= main_params


def test_student_checkpoint_holds_the_student_only(tmp_path, teacher_ckpt):
    cfg = tiny_cfg(tmp_path / "run", pixel=1.0, cwd_feat=1.0, holistic=0.1, hetero=1.0)
    trainer, hook, _ = distill(cfg, teacher_ckpt)
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert set(best["model"]) == set(build_model("lraspp_mobilenetv2", 8, width_mult=0.25).state_dict())
    assert "hooks" not in best and "optimizer" not in best
    model, meta = build_from_checkpoint(tmp_path / "run" / "best.pt")  # what eval / profile / export take
    assert meta["model"]["name"] == "lraspp_mobilenetv2"
    state = hook_state(load_checkpoint(tmp_path / "run" / "last.pt"))
    terms = state["terms"]
    assert "teacher" in state and {"discriminator", "optimizer"} <= set(terms["holistic"])
    assert terms["cwd_feat"]["parts"]
    assert any(k.startswith("hetero_t_") for k in terms["hetero"]["parts"])  # teacher-side projectors are resumable


def test_resume_repeats_the_uninterrupted_distillation(tmp_path, teacher_ckpt):
    terms = dict(pixel=1.0, cwd_feat=1.0, holistic=0.1, hetero=1.0)
    ref = tmp_path / "ref"
    distill(tiny_cfg(ref, iters=4, **terms), teacher_ckpt)
    cut = tmp_path / "cut"
    distill(tiny_cfg(cut, iters=2, **terms), teacher_ckpt)
    cfg = tiny_cfg(cut, iters=4, **terms)
    cfg.train.resume = str(cut / "last.pt")
    distill(cfg, teacher_ckpt)  # a longer schedule would change the lr, so compare only what must match:
    a, b = logged(ref), logged(cut)
    assert [r["iter"] for r in b] == [1, 2, 3, 4]
    for k in ("d_loss", "kd_pixel"):  # iterations 1-2 identical; resumed D state and parts carry over
        assert a[0][k] == pytest.approx(b[0][k]) and a[1][k] == pytest.approx(b[1][k])


def test_resume_with_another_teacher_is_refused(tmp_path, teacher_ckpt):
    run = tmp_path / "run"
    distill(tiny_cfg(run, iters=2, pixel=1.0), teacher_ckpt)
    other = tmp_path / "other.pt"
    state = load_checkpoint(teacher_ckpt)
    state["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
    save_checkpoint(state, other)
    cfg = tiny_cfg(run, iters=4, pixel=1.0)
    cfg.train.resume = "auto"
    with pytest.raises(CheckpointError, match="another teacher"):
        distill(cfg, other)


def test_teacher_with_other_classes_is_refused(tmp_path, teacher_ckpt):
    state = load_checkpoint(teacher_ckpt)
    bad = build_model("deeplabv3plus_resnet18", 7, width_mult=0.25, aux=True)
    state["model"] = bad.state_dict()
    state["meta"]["model"]["num_classes"] = 7
    save_checkpoint(state, tmp_path / "t7.pt")
    cfg = tiny_cfg(tmp_path / "run", pixel=1.0)
    with pytest.raises(ConfigError, match="predicts 7 classes, but the dataset and student have 8"):
        distill(cfg, tmp_path / "t7.pt")
    # by name + raw weights: the classifier's shape gives the class count away
    torch.save(bad.state_dict(), tmp_path / "raw7.pt")
    cfg.distill.teacher, cfg.distill.teacher_weights, cfg.distill.teacher_width_mult = "deeplabv3plus_resnet18", str(tmp_path / "raw7.pt"), 0.25
    with pytest.raises(ConfigError, match="predicts 7 classes"):
        load_teacher(cfg.distill, 8)
    # same count, other class names
    state = load_checkpoint(teacher_ckpt)
    state["meta"]["data"]["class_names"] = [f"c{i}" for i in range(8)]
    save_checkpoint(state, tmp_path / "names.pt")
    cfg.distill.teacher, cfg.distill.teacher_weights = str(tmp_path / "names.pt"), None
    with pytest.raises(ConfigError, match="same order"):
        load_teacher(cfg.distill, 8, [f"class{i}" for i in range(8)])


def test_teacher_by_name_and_weights(tmp_path, teacher_ckpt):
    cfg = tiny_cfg(tmp_path / "run", pixel=1.0)
    cfg.distill.teacher, cfg.distill.teacher_width_mult, cfg.distill.teacher_aux = "deeplabv3plus_resnet18", 0.25, False
    with pytest.raises(ConfigError, match="teacher_weights"):
        load_teacher(cfg.distill, 8)
    raw = {k: v for k, v in load_checkpoint(teacher_ckpt)["model"].items()}
    torch.save(raw, tmp_path / "raw.pt")
    cfg.distill.teacher_weights = str(tmp_path / "raw.pt")
    teacher, desc = load_teacher(cfg.distill, 8)
    ref, _ = build_from_checkpoint(teacher_ckpt)
    assert desc["fingerprint"] == load_teacher(Config().distill.__class__(teacher=str(teacher_ckpt)), 8)[1]["fingerprint"]
    x = torch.randn(1, 3, 48, 64)
    assert torch.allclose(teacher(x).logits, ref(x).logits)
    cfg.distill.teacher_width_mult = 0.5
    with pytest.raises(CheckpointError, match="do not fit"):
        load_teacher(cfg.distill, 8)


def test_heterogeneous_pair_and_loss_names():
    """A SegFormer student and a ResNet DeepLabV3+ teacher: other strides, channels and families, aligned automatically."""
    cfg = Config().distill
    for name, w in ALL_TERMS.items():
        getattr(cfg, name).weight = w
    cfg.holistic.widths = [8, 8, 8, 8]
    student = build_model("segformer_mitb0", 5, width_mult=0.25)
    teacher = build_model("deeplabv3plus_resnet18", 5, width_mult=0.25, output_stride=16)
    dis = Distiller(student, teacher, cfg, num_classes=5)
    images, masks = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    masks[0, :8] = 255
    s_out, losses = dis(images, masks, progress=0.5)
    assert set(losses) == {"kd_pixel", "kd_cwd", "kd_cwd_feat", "kd_pairwise", "kd_holistic", "kd_icsd", "kd_hetero",
                           "kd_hetero_logit", "hetero_proj_ce"}
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.backbone.patch_embed1.proj.weight.grad.abs().sum() > 0
    gan = dis.terms["holistic"].gan
    before = [p.detach().clone() for p in gan.parameters()]
    d = dis.after_step()
    assert set(d) == {"d_loss"} and d["d_loss"] == d["d_loss"]
    assert any(not torch.equal(a, b) for a, b in zip(before, gan.parameters()))  # the D step moved D
    assert dis.after_step() == {}  # one D step per student step


def test_presets_and_overrides(tmp_path):
    cfg = load_config(None, ["distill.method=skd"])
    assert (cfg.distill.pixel.weight, cfg.distill.pairwise.weight, cfg.distill.holistic.weight) == (10.0, 0.5, 0.1)
    cfg = load_config(None, ["distill.method=aicsd", "distill.pixel.weight=2"])  # a key you set wins
    assert cfg.distill.pixel.weight == 2.0 and cfg.distill.pixel.schedule == "alw" and cfg.distill.pixel.side == "early"
    assert cfg.distill.task.schedule == "alw" and cfg.distill.icsd.weight == 10.0  # values: tests/test_presets.py
    (tmp_path / "c.yaml").write_text("distill:\n  method: heteroakd\n  hetero:\n    stages: [stage4]\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.distill.hetero.weight == 1.0 and cfg.distill.hetero.stages == ["stage4"]
    with pytest.raises(ConfigError, match="not a preset"):
        load_config(None, ["distill.method=fitnet"])
    save_config(cfg, tmp_path / "resolved.yaml")  # the saved resolved config loads back to the same values
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_a_preset_named_in_overrides_of_a_built_config_applies():
    """apply_overrides (the demo's and the benchmarks' path) resolves distill.method as load_config does: it once set
    the name only, so ``segdistill demo distill.method=skd`` distilled with no KD term at all."""
    from segdistill.config import Config, apply_overrides

    cfg = apply_overrides(Config(), ["distill.method=skd", "distill.holistic.weight=0.5"])
    assert (cfg.distill.pixel.weight, cfg.distill.pixel.reduction, cfg.distill.pairwise.weight) == (10.0, "image_sum", 0.5)
    assert cfg.distill.holistic.weight == 0.5  # an override of the same call wins over the preset
    assert apply_overrides(cfg, ["train.iters=7"]).distill.pixel.weight == 10.0  # later calls keep it
    with pytest.raises(ConfigError, match="not a preset"):
        apply_overrides(Config(), ["distill.method=fitnet"])


def test_alw_schedules_task_and_terms(tmp_path, teacher_ckpt):
    cfg = tiny_cfg(tmp_path / "run", iters=4)
    cfg.distill.method = None
    cfg.distill.task.schedule, cfg.distill.task.side = "alw", "late"
    cfg.distill.pixel.weight, cfg.distill.pixel.schedule, cfg.distill.pixel.side = 10.0, "alw", "early"
    distill(cfg, teacher_ckpt)
    recs = logged(tmp_path / "run")
    assert recs[0]["ce"] == 0.0 and "kd_pixel" in recs[0]  # progress 0: all teacher
    assert recs[-1]["ce"] > 0


def test_cache_refuses_feature_terms_and_train_refuses_a_teacher(tmp_path, teacher_ckpt):
    cfg = tiny_cfg(tmp_path / "run", pairwise=1.0)
    cfg.distill.cache = "auto"
    with pytest.raises(ConfigError, match="pairwise need its features"):
        distill(cfg, teacher_ckpt)
    cfg = tiny_cfg(tmp_path / "run2")
    cfg.distill.teacher = str(teacher_ckpt)
    save_config(cfg, tmp_path / "c.yaml")
    p = subprocess.run([sys.executable, "-m", "segdistill", "train", str(tmp_path / "c.yaml")], capture_output=True, text=True)
    assert p.returncode == 2 and "segdistill distill" in p.stderr


def test_tiny_distillation_lowers_its_kd_terms(tmp_path, teacher_ckpt):
    cfg = tiny_cfg(tmp_path / "run", iters=24, pixel=1.0, cwd=1.0, pairwise=1.0, icsd=100.0)
    cfg.distill.task.weight = 0.0  # the teacher alone teaches: every KD term must fall
    cfg.data.scale_range = [1.0, 1.0]
    distill(cfg, teacher_ckpt)
    recs = logged(tmp_path / "run")
    for k in ("kd_pixel", "kd_cwd", "kd_pairwise", "kd_icsd"):
        first = sum(r[k] for r in recs[:4]) / 4
        last = sum(r[k] for r in recs[-4:]) / 4
        assert last < first, (k, first, last)


def test_cli_distill_and_torchrun(tmp_path, teacher_ckpt):
    """`segdistill distill` under torchrun with 2 gloo processes: parts and discriminator gradients averaged."""
    cfg = tiny_cfg(tmp_path / "run", iters=2, pixel=1.0, cwd_feat=1.0, holistic=0.1)
    cfg.distill.teacher = str(teacher_ckpt)
    cfg.data.batch_size = 2
    save_config(cfg, tmp_path / "c.yaml")
    p = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "segdistill",
         "distill", str(tmp_path / "c.yaml")], capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("done: best val mIoU") == 1
    assert [r["iter"] for r in logged(tmp_path / "run")] == [1, 2]


def test_cached_teacher_gives_the_online_losses_without_augmentation(tmp_path, teacher_ckpt):
    """With no random geometry the cached logits are the online teacher's (to fp16), so every logit term agrees."""
    runs = {}
    for mode in ("off", "auto"):
        cfg = tiny_cfg(tmp_path / mode, iters=2, pixel=1.0, cwd=1.0, icsd=100.0)
        cfg.data.scale_range, cfg.data.flip, cfg.data.jitter = [1.0, 1.0], False, 0.0
        cfg.distill.cache = mode
        distill(cfg, teacher_ckpt)
        runs[mode] = logged(tmp_path / mode)
    assert (tmp_path / "auto" / "teacher_cache").is_dir()
    for a, b in zip(runs["off"], runs["auto"]):
        for k in ("kd_pixel", "kd_cwd", "kd_icsd"):
            assert b[k] == pytest.approx(a[k], rel=1e-2, abs=1e-4), k
