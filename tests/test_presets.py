"""Method presets against what the authors' released code computes (issue 13).

Each reference below is written from a reading of the authors' code (AICSD ``distiller.py`` / ``train_kd.py``, SKD
``utils/criterion.py`` / ``utils/utils.py`` / ``run_train_val.sh``, CIRKD ``losses/cwd.py``), not copied from it: the
preset's term, at the preset's weight, must equal the authors' loss at their flag's value.
"""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from segdistill.config import DISTILL_PRESETS, load_config
from segdistill.distill.distiller import schedule_of
from segdistill.distill.losses import PairwiseKD, PixelKD
from segdistill.distill.terms import BuildContext, get_term
from segdistill.errors import ConfigError


def built(cfg, name, channels=None):
    """The term ``name`` of a loaded config, built against stand-in models with the given feature channels."""
    models = SimpleNamespace(feature_channels=channels or {})
    term = get_term(name)(getattr(cfg.distill, name))
    term.build(BuildContext(student=models, teacher=models, num_classes=5))
    return term


def logits(seed, shape=(3, 5, 6, 7)):
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_(True)


# ---------------------------------------------------------------- the authors' formulas, written here
def aicsd_pixel(z_s, z_t):
    """AICSD's pi_loss before its weight: torch's KLDivLoss() default 'mean', i.e. the mean over every B*K*H*W element
    of p_t * (log p_t - log_softmax(z_s)), T = 1, no pixel masked."""
    log_p_s = F.log_softmax(z_s, dim=1)
    p_t = F.softmax(z_t, dim=1)
    return (p_t * (p_t.log() - log_p_s)).sum() / z_s.numel()


def skd_pixel(z_s, z_t):
    """SKD's CriterionPixelWise: the soft cross-entropy summed over every pixel of the batch, divided by H*W only."""
    _, _, h, w = z_s.shape
    return -(F.softmax(z_t, dim=1) * F.log_softmax(z_s, dim=1)).sum() / (h * w)


def authors_pairwise(f_s, f_t, scale=0.5):
    """SKD's / AICSD's pair-wise loss: max-pool with kernel = stride = int(scale * size) (ceil mode), each node divided
    by its detached L2 norm + 1e-8, similarity = node dot products, sum of squared differences / N^2 / B."""
    h, w = f_t.shape[-2:]
    k = (int(h * scale), int(w * scale))
    s, t = (F.max_pool2d(f, kernel_size=k, stride=k, ceil_mode=True) for f in (f_s, f_t))

    def sim(f):
        f = f / (f.square().sum(1, keepdim=True).sqrt().detach() + 1e-8)
        f = f.flatten(2)
        return f.transpose(1, 2) @ f  # (B, N, N)

    a_s, a_t = sim(s), sim(t)
    n = a_s.shape[-1]
    return (a_t - a_s).square().sum() / n**2 / f_s.shape[0]


# ---------------------------------------------------------------- the preset values
def test_preset_values():
    assert set(DISTILL_PRESETS) == {"skd", "aicsd", "heteroakd"}
    skd = load_config(None, ["distill.method=skd"]).distill
    assert (skd.pixel.weight, skd.pixel.T, skd.pixel.reduction) == (10.0, 1.0, "image_sum")
    assert (skd.pairwise.weight, skd.pairwise.scale, skd.pairwise.feature) == (0.5, 0.5, "pre_logits")
    assert skd.holistic.weight == 0.1 and skd.icsd.weight == 0.0
    a = load_config(None, ["distill.method=aicsd"]).distill
    assert (a.pixel.weight, a.pixel.reduction, a.pixel.schedule, a.pixel.side) == (10.0, "element", "alw", "early")
    assert (a.task.weight, a.task.schedule, a.task.side) == (1.0, "alw", "late")
    assert (a.icsd.weight, a.icsd.schedule, a.icsd.side) == (10.0, "alw", "late")  # the middle of the CamVid sweep's harmless decades
    assert a.pairwise.weight == 0.0  # their ALW loss leaves pa_loss out
    h = load_config(None, ["distill.method=heteroakd"]).distill
    assert (h.hetero.weight, h.hetero.logit_kd_weight, h.hetero.stages) == (1.0, 1.0, ["stage3", "stage4"])


def test_aicsd_alw_weights_follow_progress():
    """AICSD's ALW: L = a (CE + ICSD) + (1 - a) KD_pixel, a = training progress."""
    d = load_config(None, ["distill.method=aicsd"]).distill
    w = d.icsd.weight
    for a in (0.0, 0.3, 1.0):
        assert schedule_of(d.task)(a) == pytest.approx(a)
        assert schedule_of(d.icsd)(a) == pytest.approx(w * a)
        assert schedule_of(d.pixel)(a) == pytest.approx(10 * (1 - a))


# ---------------------------------------------------------------- each mapped term equals the authors' loss
def test_aicsd_pixel_equals_their_kldivloss_mean():
    cfg = load_config(None, ["distill.method=aicsd"])
    fn = built(cfg, "pixel").fn
    z_s, z_t = logits(0), logits(1)
    ours = cfg.distill.pixel.weight * fn(z_s, z_t)  # the preset's weight (before the ALW factor)
    theirs = 10 * aicsd_pixel(z_s, z_t)  # their --pi_lambda 10
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-10)
    # the same loss in segdistill's per-pixel convention is 10 / K
    assert ours.item() == pytest.approx(10 / z_s.shape[1] * PixelKD()(z_s, z_t).item(), rel=1e-10)


def test_skd_pixel_equals_their_batch_summed_cross_entropy():
    cfg = load_config(None, ["distill.method=skd"])
    fn = built(cfg, "pixel").fn
    z_s, z_t = logits(2), logits(3)
    ours = cfg.distill.pixel.weight * fn(z_s, z_t)
    theirs = 10 * skd_pixel(z_s, z_t)  # their --lambda-pi 10
    (g_ours,) = torch.autograd.grad(ours, z_s)
    (g_theirs,) = torch.autograd.grad(theirs, z_s)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-10, atol=1e-12)  # soft CE = KL + teacher entropy
    p_t = F.softmax(z_t, dim=1)
    entropy = -(p_t * p_t.log()).sum(1).mean((1, 2)).sum()
    assert ours.item() == pytest.approx((theirs - 10 * entropy).item(), rel=1e-10)
    # B times segdistill's per-pixel mean: weight 10 there is 10 * B here
    assert ours.item() == pytest.approx(10 * z_s.shape[0] * PixelKD()(z_s, z_t).item(), rel=1e-10)


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (12, 15), (3, 2)])
def test_skd_pairwise_equals_their_pooled_similarity_loss(size):
    cfg = load_config(None, ["distill.method=skd"])
    fn = built(cfg, "pairwise", {"pre_logits": 6}).fn
    g = torch.Generator().manual_seed(sum(size))
    f_s = torch.randn(2, 6, *size, generator=g, dtype=torch.float64)
    f_t = torch.randn(2, 6, *size, generator=g, dtype=torch.float64)
    ours = cfg.distill.pairwise.weight * fn(f_s, f_t)
    theirs = 0.5 * authors_pairwise(f_s, f_t)  # run_train_val.sh: --lambda-pa 0.5 --pool-scale 0.5
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)  # their norm adds 1e-8


def test_pairwise_scale_pools_to_a_fixed_grid():
    """scale 0.5 gives ~2 x 2 nodes whatever the map's size (3 x 3 on the authors' 33 x 33 maps, ceil mode)."""
    for (h, w), n in {(64, 64): 4, (33, 33): 9, (12, 15): 6, (1, 1): 1}.items():
        kh, kw = PairwiseKD(scale=0.5).kernel(h, w)
        assert F.max_pool2d(torch.zeros(1, 1, h, w), (kh, kw), (kh, kw), ceil_mode=True)[0, 0].numel() == n
    assert PairwiseKD(patch=2).kernel(64, 64) == (2, 2)  # without scale: patch x patch pixels per node


def test_cwd_term_equals_cirkd_channel_wise_kl():
    """CIRKD's CriterionCWD (norm 'channel', divergence 'kl', T 4): sum of KL(softmax over H*W) / (N*C) * T^2."""
    cfg = load_config(None, ["distill.cwd.weight=3"])
    fn = built(cfg, "cwd").fn
    z_s, z_t = logits(4), logits(5)
    n, c = z_s.shape[:2]
    log_s = F.log_softmax(z_s.flatten(2) / 4, dim=-1)
    p_t = F.softmax(z_t.flatten(2) / 4, dim=-1)
    theirs = 3 * (p_t * (p_t.log() - log_s)).sum() / (n * c) * 16
    assert (cfg.distill.cwd.weight * fn(z_s, z_t)).item() == pytest.approx(theirs.item(), rel=1e-10)


# ---------------------------------------------------------------- the new settings
def test_pixel_reductions_with_ignored_pixels():
    z_s, z_t = logits(6), logits(7)
    y = torch.randint(0, 5, (3, 6, 7))
    y[0, :3] = 255
    y[2] = 255  # an image without a valid pixel adds nothing to image_sum
    per_pixel = PixelKD()(z_s, z_t, y)
    assert PixelKD(reduction="element")(z_s, z_t, y).item() == pytest.approx(per_pixel.item() / 5, rel=1e-12)
    kl = PixelKD()
    by_image = sum(kl(z_s[b:b + 1], z_t[b:b + 1], y[b:b + 1]) for b in (0, 1))
    assert PixelKD(reduction="image_sum")(z_s, z_t, y).item() == pytest.approx(by_image.item(), rel=1e-12)
    none = torch.full_like(y, 255)
    for red in ("pixel", "element", "image_sum"):
        loss = PixelKD(reduction=red)(z_s, z_t, none)
        assert loss.item() == 0.0 and loss.requires_grad


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="reduction"):
        PixelKD(reduction="sum")
    with pytest.raises(ValueError, match="scale"):
        PairwiseKD(scale=1.5)
    with pytest.raises(ConfigError, match="distill.pixel.reduction"):
        load_config(None, ["distill.pixel.weight=1", "distill.pixel.reduction=sum"])
    with pytest.raises(ConfigError, match="distill.pairwise.scale"):
        load_config(None, ["distill.pairwise.weight=1", "distill.pairwise.scale=0"])
