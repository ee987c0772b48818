"""KD terms as a registry: a term defined here is configured, run and logged by `segdistill distill` without editing
the Distiller; unknown term names, the teacher-cache refusal of feature terms, and v1 checkpoints of the hook."""
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import yaml
from test_distill import tiny_cfg

from segdistill.cli import main
from segdistill.config import KDTerm, from_dict, load_config, save_config, to_dict
from segdistill.data import build_dataset
from segdistill.distill.distiller import Distiller
from segdistill.distill.hook import DistillHook
from segdistill.distill.losses import match_size
from segdistill.distill.terms import FeatureTerm, KDInputs, Term, register_term, term_types, unregister_term
from segdistill.engine.trainer import Trainer
from segdistill.errors import CheckpointError, ConfigError
from segdistill.models import build_model

LEGACY = Path(__file__).parent / "data" / "legacy_v1"
TEACHER = LEGACY / "teacher.pt"  # fcn_resnet18, width 0.125, 8 classes of the tiny synthetic data


# ---------------------------------------------------------------- two terms defined here, not in segdistill
@dataclass
class LpConfig(KDTerm):
    p: float = 2.0  # the term's own setting


class LogitLp(Term):
    """``kd_lp = mean |Z_s - Z_t|^p`` over classes and pixels (teacher resized to the student)."""

    Config = LpConfig
    needs = frozenset({"logits"})

    def forward(self, x: KDInputs):
        return {"kd_lp": (x.z_s - match_size(x.z_t, x.z_s)).abs().pow(self.cfg.p).mean()}


class FeatureL2(FeatureTerm):
    """``kd_feat_l2 = mean (A(F_s) - F_t)^2`` with a 1x1 adapter ``A`` (a training-only part)."""

    def build(self, ctx):
        cs, ct = self.feature_channels(ctx)
        self.parts["adapter"] = nn.Conv2d(cs, ct, 1)

    def forward(self, x: KDInputs):
        f_s, f_t = self.features(x)
        a = self.parts["adapter"](f_s)
        return {"kd_feat_l2": (a - match_size(f_t.detach(), a)).square().mean()}


@pytest.fixture
def extra_terms():
    """Registered for one test only, so other tests' saved configs never name them."""
    register_term("lp")(LogitLp)
    register_term("feat_l2")(FeatureL2)
    yield
    unregister_term("lp")
    unregister_term("feat_l2")


def logged(run_dir):
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]


# ---------------------------------------------------------------- config
def test_new_term_gets_a_config_section(tmp_path, extra_terms):
    (tmp_path / "c.yaml").write_text("distill:\n  lp: {weight: 0.5}\n")
    cfg = load_config(tmp_path / "c.yaml", ["distill.lp.p=1", "distill.pixel.weight=2"])
    assert isinstance(cfg.distill.lp, LpConfig) and (cfg.distill.lp.weight, cfg.distill.lp.p) == (0.5, 1.0)
    assert cfg.distill.pixel.weight == 2.0 and cfg.distill.feat_l2.feature == "pre_logits"  # defaults on first use
    d = to_dict(cfg)["distill"]
    assert d["lp"] == {"weight": 0.5, "schedule": "constant", "start": 1.0, "end": 1.0, "side": "late", "p": 1.0}
    assert {"pixel", "cwd", "cwd_feat", "pairwise", "holistic", "icsd", "hetero", "task"} <= set(d)  # flat, as before
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg == from_dict(to_dict(cfg))
    other = from_dict(to_dict(cfg))
    other.distill.lp.p = 3.0
    assert other != cfg  # equality sees the term sections


def test_unknown_term_is_a_config_error_naming_the_known_ones(extra_terms):
    with pytest.raises(ConfigError, match=r"distill\.fitnet.*KD terms: pixel, cwd, .*hetero, lp, feat_l2"):
        load_config(None, ["distill.fitnet.weight=1"])
    with pytest.raises(ConfigError, match=r"distill\.lp\.q.*weight, schedule, start, end, side, p"):
        load_config(None, ["distill.lp.q=1"])
    unregister_term("lp")
    with pytest.raises(ConfigError, match="distill.lp"):  # a config naming a term nobody registered
        load_config(None, ["distill.lp.weight=1"])


def test_registration_checks_the_declaration():
    class NoConfig(Term):
        Config = dict

    class BadNeeds(Term):
        needs = frozenset({"depth"})

    with pytest.raises(TypeError, match="KDTerm"):
        register_term("no_config")(NoConfig)
    with pytest.raises(TypeError, match="needs"):
        register_term("bad_needs")(BadNeeds)
    with pytest.raises(ValueError, match="already registered"):
        register_term("pixel")(LogitLp)
    assert not {"no_config", "bad_needs"} & set(term_types())


# ---------------------------------------------------------------- the term in a run
def test_cli_distill_runs_a_term_registered_here(tmp_path, extra_terms):
    run = tmp_path / "run"
    cfg = tiny_cfg(run, iters=3, pixel=1.0)
    save_config(cfg, tmp_path / "c.yaml")
    main(["distill", str(tmp_path / "c.yaml"), f"distill.teacher={TEACHER}", "distill.lp.weight=0.5", "distill.lp.p=1",
          "distill.feat_l2.weight=0.1"])
    recs = logged(run)
    assert [r["iter"] for r in recs] == [1, 2, 3]
    for r in recs:
        assert r["kd_lp"] > 0 and r["kd_feat_l2"] > 0 and "kd_pixel" in r
        assert r["loss"] == pytest.approx(r["ce"] + r["kd_pixel"] + r["kd_lp"] + r["kd_feat_l2"], rel=1e-5)
    saved = yaml.safe_load((run / "config.yaml").read_text())["distill"]
    assert saved["lp"]["p"] == 1.0 and saved["lp"]["weight"] == 0.5 and saved["feat_l2"]["weight"] == 0.1


def test_feature_terms_need_an_online_teacher(tmp_path, extra_terms):
    cfg = tiny_cfg(tmp_path / "run", iters=2, pixel=1.0, feat_l2=1.0)
    cfg.distill.teacher, cfg.distill.cache = str(TEACHER), "auto"
    with pytest.raises(ConfigError, match="feat_l2 need its features"):
        Trainer(cfg, hooks=[DistillHook(cfg)])
    # the built-in terms declare the same needs as before terms were a registry
    cfg = tiny_cfg(tmp_path / "run", pixel=1.0, cwd=1.0, cwd_feat=1.0, pairwise=1.0, holistic=0.1, icsd=1.0, hetero=1.0,
                   lp=1.0, feat_l2=1.0)
    student = build_model("lraspp_mobilenetv2", 8, width_mult=0.125)
    dis = Distiller(student, build_model("fcn_resnet18", 8, width_mult=0.125), cfg.distill, 8)
    assert dis.active == ["pixel", "cwd", "icsd", "holistic", "cwd_feat", "pairwise", "hetero", "lp", "feat_l2"]
    assert dis.terms_needing("features") == ["cwd_feat", "pairwise", "hetero", "feat_l2"]
    assert dis.needs_teacher_features
    # parts (adapters, projectors) are the student optimizer's; the discriminator has its own
    parts = {id(p) for p in dis.part_parameters()}
    assert {id(p) for p in dis.terms["feat_l2"].parts.parameters()} <= parts
    assert not parts & {id(p) for p in dis.terms["holistic"].gan.parameters()}


# ---------------------------------------------------------------- checkpoints written before the registry
def _legacy_hook(**terms) -> DistillHook:
    """A DistillHook set up as the v1 fixture's run was (see tests/data/legacy_v1/make.py)."""
    cfg = tiny_cfg("unused", **terms)
    cfg.model.width_mult, cfg.distill.holistic.widths, cfg.distill.teacher = 0.125, [4, 4, 4, 4], str(TEACHER)
    trainer = SimpleNamespace(num_classes=8, device=torch.device("cpu"),
                              train_set=build_dataset(cfg.data, cfg.data.train_split, train=True),
                              model=build_model(cfg.model.name, 8, width_mult=0.125))
    hook = DistillHook(cfg)
    hook.setup(trainer)
    return hook


def test_v1_hook_state_loads(tmp_path):
    full = torch.load(LEGACY / "student_last.pt", map_location="cpu", weights_only=True)
    old = full["hooks"][0]
    assert set(old) == {"teacher", "parts", "discriminator", "d_optimizer"}  # the v1 layout
    hook = _legacy_hook(pixel=1.0, cwd_feat=1.0, holistic=0.1, hetero=1.0)
    hook.load_state_dict(old)
    new = hook.state_dict()
    terms = new["terms"]
    for k, v in old["parts"].items():  # every part lands in its term, unchanged
        owner = "cwd_feat" if k.startswith("cwd_feat.") else "hetero"
        assert torch.equal(terms[owner]["parts"][k], v), k
    assert terms["pixel"] == {"parts": {}}
    for k, v in old["discriminator"].items():
        assert torch.equal(terms["holistic"]["discriminator"][k], v), k
    d_opt = terms["holistic"]["optimizer"]
    assert d_opt["param_groups"] == old["d_optimizer"]["param_groups"]
    for i, s in old["d_optimizer"]["state"].items():
        assert all(torch.equal(d_opt["state"][i][k], s[k]) for k in s)
    # the new layout saves and loads back (through torch.save, weights-only)
    torch.save(new, tmp_path / "hook.pt")
    again = _legacy_hook(pixel=1.0, cwd_feat=1.0, holistic=0.1, hetero=1.0)
    again.load_state_dict(torch.load(tmp_path / "hook.pt", weights_only=True))
    assert all(torch.equal(v, again.state_dict()["terms"]["hetero"]["parts"][k]) for k, v in terms["hetero"]["parts"].items())


def test_v1_state_of_other_terms():
    old = torch.load(LEGACY / "student_last.pt", map_location="cpu", weights_only=True)["hooks"][0]
    with pytest.raises(CheckpointError, match="does not match this config's KD terms"):  # hetero's projectors left over
        _legacy_hook(pixel=1.0, cwd_feat=1.0, holistic=0.1).load_state_dict(old)
    _legacy_hook(pixel=1.0, cwd_feat=1.0, hetero=1.0).load_state_dict(old)  # v1 resumes ignored an unused D, still do


def test_new_state_of_other_terms_is_refused():
    hook = _legacy_hook(pixel=1.0, cwd_feat=1.0, holistic=0.1, hetero=1.0)
    state = hook.state_dict()
    other = _legacy_hook(pixel=1.0, cwd_feat=1.0, hetero=1.0)
    with pytest.raises(CheckpointError, match=r"holds state for the terms \['cwd_feat', 'hetero', 'holistic'\]"):
        other.load_state_dict(state)
