"""HeteroAKD and SKD holistic (WGAN-GP) terms: slow references and properties, tiny tensors."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from segdistill.distill.hetero import HeteroAKD, LogitProjector, reliability
from segdistill.distill.holistic import Discriminator, HolisticKD, gradient_penalty
from segdistill.distill.losses import PixelKD

torch.set_num_threads(1)
IGN = 255


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _data(B, K, H=4, W=5, seed=0, n_ignore=3):
    g = _gen(seed)
    z_s = torch.randn(B, K, H, W, generator=g, dtype=torch.float64)
    z_t = torch.randn(B, K, H, W, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, K, (B, H, W), generator=g)
    flat = y.view(-1)
    idx = torch.randperm(flat.numel(), generator=g)[:n_ignore]
    flat[idx] = IGN
    return z_s, z_t, y


# ---------------------------------------------------------------- HeteroAKD reference
def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def _bce(z, y):
    p = _sig(z)
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def _softmax(v):
    m = max(v)
    e = [math.exp(x - m) for x in v]
    s = sum(e)
    return [x / s for x in e]


def ref_kmm(z_s, z_t, y, T, mode, eps=1e-8):
    """Slow, element-by-element KMM + KEM term."""
    B, K, H, W = z_s.shape
    zs, zt = z_s.tolist(), z_t.tolist()
    n_total = 0
    total = 0.0
    for b in range(B):
        pix = []
        for i in range(H):
            for j in range(W):
                lab = int(y[b, i, j])
                if lab == IGN:
                    continue
                s = [zs[b][k][i][j] for k in range(K)]
                t = [zt[b][k][i][j] for k in range(K)]
                oh = [1.0 if k == lab else 0.0 for k in range(K)]
                hs = [_bce(s[k], oh[k]) for k in range(K)]
                ht = [_bce(t[k], oh[k]) for k in range(K)]
                if mode == "space":
                    hs_m, ht_m = sum(hs) / K, sum(ht) / K
                    st = [hs_m / (ht_m + hs_m + eps)] * K
                else:
                    st = [hs[k] / (ht[k] + hs[k] + eps) for k in range(K)]
                mix = [st[k] * t[k] + (1 - st[k]) * s[k] for k in range(K)]
                hm = [_bce(mix[k], oh[k]) for k in range(K)]
                if mode == "space":
                    hm_m = sum(hm) / K
                    score = hs_m + max(0.0, hs_m - hm_m)
                else:
                    score = [hs[k] + max(0.0, hs[k] - hm[k]) for k in range(K)]
                pm = _softmax([v / T for v in mix])
                ps = _softmax([v / T for v in s])
                ce = [-pm[k] * math.log(ps[k]) for k in range(K)]
                pix.append((score, ce))
        n_total += len(pix)
        if mode == "space" and pix:
            w = _softmax([p[0] for p in pix])
            total += len(pix) * sum(w[n] * sum(pix[n][1]) for n in range(len(pix)))
        elif mode == "classes":
            for score, ce in pix:
                w = _softmax(score)
                total += K * sum(w[k] * ce[k] for k in range(K))
    return T * T * total / n_total


@pytest.mark.parametrize("mode", ["space", "classes"])
@pytest.mark.parametrize("B,K", [(1, 2), (3, 5)])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_hetero_matches_reference(mode, B, K, T):
    z_s, z_t, y = _data(B, K, seed=B * 10 + K)
    out = HeteroAKD(K, T=T, weight_over=mode)(z_s, z_t, y)
    assert set(out) == {"kmm", "logit_kd"}
    assert out["kmm"].item() == pytest.approx(ref_kmm(z_s, z_t, y, T, mode), rel=1e-9, abs=1e-12)
    assert out["logit_kd"].item() == pytest.approx(PixelKD(T)(z_s, z_t, y).item(), rel=1e-12)


def test_hetero_logit_kd_weight():
    z_s, z_t, y = _data(2, 3)
    a = HeteroAKD(3, logit_kd_weight=0.0)(z_s, z_t, y)
    b = HeteroAKD(3, logit_kd_weight=2.5)(z_s, z_t, y)
    assert a["logit_kd"].item() == 0.0
    assert b["kmm"].item() == pytest.approx(a["kmm"].item())
    assert b["logit_kd"].item() == pytest.approx(2.5 * PixelKD()(z_s, z_t, y).item())


@pytest.mark.parametrize("mode", ["space", "classes"])
def test_hetero_no_grad_to_teacher(mode):
    z_s, z_t, y = _data(2, 4)
    z_s.requires_grad_(True)
    z_t.requires_grad_(True)
    out = HeteroAKD(4, weight_over=mode)(z_s, z_t, y)
    sum(out.values()).backward()
    assert z_t.grad is None
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["space", "classes"])
def test_hetero_ignored_pixels_do_not_matter(mode):
    z_s, z_t, y = _data(2, 3, n_ignore=5)
    loss = HeteroAKD(3, weight_over=mode)
    a = loss(z_s, z_t, y)
    ign = (y == IGN)[:, None].expand_as(z_s)
    z_s2, z_t2 = z_s.clone(), z_t.clone()
    z_s2[ign] = 50.0
    z_t2[ign] = -30.0
    b = loss(z_s2, z_t2, y)
    for k in a:
        assert a[k].item() == pytest.approx(b[k].item(), rel=1e-12)


@pytest.mark.parametrize("mode", ["space", "classes"])
def test_hetero_all_ignored_is_zero_with_graph(mode):
    z_s, z_t, y = _data(1, 2)
    y[:] = IGN
    z_s.requires_grad_(True)
    out = HeteroAKD(2, weight_over=mode)(z_s, z_t, y)
    assert out["kmm"].item() == 0.0 and out["logit_kd"].item() == 0.0
    sum(out.values()).backward()
    assert torch.all(z_s.grad == 0)


@pytest.mark.parametrize("mode", ["space", "classes"])
@pytest.mark.parametrize("B,K", [(1, 2), (3, 5)])
def test_hetero_student_equals_teacher(mode, B, K):
    z, _, y = _data(B, K, seed=7)
    loss = HeteroAKD(K, weight_over=mode)
    z_mix, w, valid = loss.mix(z, z.clone(), y)
    torch.testing.assert_close(z_mix, z, rtol=0, atol=1e-12)
    z_s = z.clone().requires_grad_(True)
    out = loss(z_s, z.clone(), y)
    # KMM = weighted soft CE of the student with itself, i.e. its (weighted) entropy ...
    p = torch.softmax(z, 1)
    ent_k = -(p * torch.log_softmax(z, 1))
    n = valid.sum()
    if mode == "space":
        n_b = valid.flatten(1).sum(1).double()
        ent = (n_b[:, None, None] * w * ent_k.sum(1)).sum() / n
    else:
        ent = (K * w * ent_k).sum() / n
    assert out["kmm"].item() == pytest.approx(ent.item(), rel=1e-10)
    assert out["logit_kd"].item() == pytest.approx(0.0, abs=1e-12)
    sum(out.values()).backward()
    if mode == "space":
        # ... which is the minimum over z_s for that (detached) target: the gradient vanishes.
        assert z_s.grad.abs().max().item() < 1e-10
    else:
        # per-class weights move the minimiser to q ~ w * p, so the student is still pulled
        # (towards the classes with the largest reliability score) even when it equals the teacher.
        assert z_s.grad.abs().max().item() > 1e-6


def test_hetero_teacher_resized_and_weights_sum_to_one():
    g = _gen(3)
    z_s = torch.randn(2, 3, 4, 4, generator=g)
    z_t = torch.randn(2, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (2, 8, 8), generator=g)
    loss = HeteroAKD(3, weight_over="space")
    out = loss(z_s, z_t, y)
    assert torch.isfinite(out["kmm"]) and torch.isfinite(out["logit_kd"])
    y4 = F.interpolate(y[:, None].float(), size=(4, 4), mode="nearest")[:, 0].long()
    z_t4 = F.interpolate(z_t, size=(4, 4), mode="bilinear", align_corners=False)
    out2 = loss(z_s, z_t4, y4)
    assert out["kmm"].item() == pytest.approx(out2["kmm"].item(), rel=1e-6)
    _, w, _ = loss.mix(z_s, z_t4, y4)
    torch.testing.assert_close(w.flatten(1).sum(1), torch.ones(2))
    _, wc, _ = HeteroAKD(3, weight_over="classes").mix(z_s, z_t4, y4)
    torch.testing.assert_close(wc.sum(1), torch.ones(2, 4, 4))


def test_reliability_reductions_and_bad_args():
    z, _, y = _data(2, 3)
    h = reliability(z, y, 3, IGN, reduction="none")
    assert h.shape == z.shape
    torch.testing.assert_close(reliability(z, y, 3, IGN), h.mean(1))
    b, i, j = (y != IGN).nonzero()[0].tolist()
    lab = int(y[b, i, j])
    assert h[b, lab, i, j].item() == pytest.approx(_bce(z[b, lab, i, j].item(), 1.0), rel=1e-12)
    with pytest.raises(ValueError):
        reliability(z, y, 3, IGN, reduction="sum")
    with pytest.raises(ValueError):
        HeteroAKD(3, weight_over="channels")
    with pytest.raises(ValueError):
        HeteroAKD(3, T=0)


def test_logit_projector():
    proj = LogitProjector(6, 4)
    layers = list(proj.proj)
    assert isinstance(layers[0], nn.Conv2d) and layers[0].kernel_size == (1, 1) and layers[0].out_channels == 4
    assert isinstance(layers[1], nn.BatchNorm2d) and isinstance(layers[2], nn.ReLU)
    f = torch.randn(2, 6, 4, 4, generator=_gen())
    assert proj(f).shape == (2, 4, 4, 4)
    out = proj(f, size=(8, 8))
    assert out.shape == (2, 4, 8, 8) and (out >= 0).all()


# ---------------------------------------------------------------- holistic (WGAN-GP)
TINY = (8, 8, 8, 8)


class LinearD(nn.Module):
    def __init__(self, shape, seed=0):
        super().__init__()
        self.w = nn.Parameter(torch.randn(*shape, generator=_gen(seed), dtype=torch.float64))

    def forward(self, x, image=None):
        return (self.w * x).flatten(1).sum(1)


def test_gradient_penalty_linear_discriminator():
    D = LinearD((2, 4, 4))
    g = _gen(1)
    real = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    fake = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    gp = gradient_penalty(D, real, fake)
    expected = (D.w.norm() - 1) ** 2
    assert gp.item() == pytest.approx(expected.item(), rel=1e-12)
    gp.backward()  # create_graph=True: the penalty trains D
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    torch.testing.assert_close(D.w.grad, (2 * (D.w.norm() - 1) * D.w / D.w.norm()).detach())


def _holo_data(B=2, K=3, H=32, W=32, seed=0):
    g = _gen(seed)
    z_s = torch.randn(B, K, H, W, generator=g)
    z_t = torch.randn(B, K, H, W, generator=g) * 3
    img = torch.randn(B, 3, H, W, generator=g)
    return z_s, z_t, img


@pytest.mark.parametrize("size", [(32, 32), (23, 31), (16, 16)])
@pytest.mark.parametrize("cond", [True, False])
def test_discriminator_output_shape(size, cond):
    torch.manual_seed(0)
    D = Discriminator(3, condition_on_image=cond, widths=TINY)
    z, _, img = _holo_data(H=size[0], W=size[1])
    out = D(torch.softmax(z, 1), img if cond else None)
    assert out.shape == (2,)
    # image given at another size is resized to the map's size
    if cond:
        assert D(torch.softmax(z, 1), F.interpolate(img, scale_factor=2.0)).shape == (2,)
        with pytest.raises(ValueError):
            D(torch.softmax(z, 1))
    assert D.features[3].gamma.item() == 0.0  # SAGAN: attention starts as identity


def test_d_loss_no_grad_to_student_and_teacher():
    torch.manual_seed(0)
    hkd = HolisticKD(Discriminator(3, widths=TINY))
    z_s, z_t, img = _holo_data()
    z_s.requires_grad_(True)
    z_t.requires_grad_(True)
    loss = hkd.d_loss(z_s, z_t, img)
    loss.backward()
    assert z_s.grad is None and z_t.grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in hkd.discriminator.parameters())


def test_g_loss_reaches_student_only_student_stepped():
    torch.manual_seed(0)
    D = Discriminator(3, condition_on_image=False, widths=TINY)
    hkd = HolisticKD(D, l_ho=0.1)
    z_s, _, _ = _holo_data()
    z_s = z_s.requires_grad_(True)
    opt = torch.optim.SGD([z_s], lr=1.0)
    D.eval()  # deterministic (no power-iteration / BN-statistics update) for the value check
    assert hkd.g_loss(z_s).item() == pytest.approx(-0.1 * D(torch.softmax(z_s.detach(), 1)).mean().item(), rel=1e-6)
    D.train()
    before = {k: v.detach().clone() for k, v in D.named_parameters()}
    loss = hkd.g_loss(z_s)
    opt.zero_grad()
    loss.backward()
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0
    z0 = z_s.detach().clone()
    opt.step()
    assert not torch.equal(z0, z_s.detach())
    after = dict(D.named_parameters())
    for k, v in before.items():
        assert torch.equal(v, after[k]), k  # only the student's optimizer stepped
    assert any(p.grad is not None for p in D.parameters())  # D got grads: zero them before its step


def test_teacher_resized_in_d_loss():
    torch.manual_seed(0)
    hkd = HolisticKD(Discriminator(3, condition_on_image=False, widths=TINY))
    z_s, _, _ = _holo_data(H=16, W=16)
    z_t = torch.randn(2, 3, 32, 32, generator=_gen(5))
    assert torch.isfinite(hkd.d_loss(z_s, z_t))


def test_d_steps_lower_d_loss():
    torch.manual_seed(0)
    D = Discriminator(3, widths=TINY)
    hkd = HolisticKD(D)
    z_s, z_t, img = _holo_data(B=4)
    opt = torch.optim.Adam(D.parameters(), lr=1e-3)

    def evaluate():
        torch.manual_seed(123)  # same interpolates each time
        return hkd.d_loss(z_s, z_t, img)

    first = evaluate().item()
    for _ in range(5):
        opt.zero_grad()
        loss = hkd.d_loss(z_s, z_t, img)
        loss.backward()
        opt.step()
    last = evaluate().item()
    assert last < first
