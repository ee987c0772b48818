"""KD loss terms against slow, plainly written references, plus their properties."""
import math

import pytest
import torch
import torch.nn.functional as F

from segdistill.distill import (
    ALW,
    ChannelWiseKD,
    InterClassSimilarityKD,
    PairwiseKD,
    PixelKD,
    WeightSchedule,
    alw_weights,
    inter_class_similarity,
)

torch.set_num_threads(1)


def _kl(p, q):
    """KL(p || q) for 1-D probability vectors, written out."""
    return sum(float(p[i]) * (math.log(float(p[i])) - math.log(float(q[i]))) for i in range(len(p)))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- PixelKD
def ref_pixel_kd(z_s, z_t, target, T, ignore=255):
    B, K, H, W = z_s.shape
    total, n = 0.0, 0
    for b in range(B):
        for y in range(H):
            for x in range(W):
                if target is not None and int(target[b, y, x]) == ignore:
                    continue
                p = torch.softmax(z_t[b, :, y, x].double() / T, 0)
                q = torch.softmax(z_s[b, :, y, x].double() / T, 0)
                total += T * T * _kl(p, q)
                n += 1
    return total / n


@pytest.mark.parametrize("B,K", [(1, 2), (3, 7), (2, 5)])
@pytest.mark.parametrize("T", [1.0, 3.0])
def test_pixel_kd_reference(B, K, T):
    g = _gen(B * 10 + K)
    z_s, z_t = torch.randn(B, K, 6, 6, generator=g), torch.randn(B, K, 6, 6, generator=g)
    target = torch.randint(0, K, (B, 6, 6), generator=g)
    target[:, :2, :3] = 255
    loss = PixelKD(T=T)(z_s, z_t, target)
    assert loss.item() == pytest.approx(ref_pixel_kd(z_s, z_t, target, T), rel=1e-5, abs=1e-7)
    loss_all = PixelKD(T=T)(z_s, z_t)
    assert loss_all.item() == pytest.approx(ref_pixel_kd(z_s, z_t, None, T), rel=1e-5, abs=1e-7)


def test_pixel_kd_ignored_pixels_excluded():
    g = _gen(1)
    z_s, z_t = torch.randn(2, 5, 8, 8, generator=g), torch.randn(2, 5, 8, 8, generator=g)
    target = torch.randint(0, 5, (2, 8, 8), generator=g)
    target[0, 3:6, 2:7] = 255
    target[1, 0, :] = 255
    mask = (target == 255)[:, None].expand_as(z_s)
    z_s2, z_t2 = z_s.clone(), z_t.clone()
    z_s2[mask] = 100 * torch.randn(int(mask.sum()), generator=g)
    z_t2[mask] = -100 * torch.randn(int(mask.sum()), generator=g)
    kd = PixelKD()
    assert torch.allclose(kd(z_s, z_t, target), kd(z_s2, z_t2, target), atol=1e-7)
    # and without the target they would count
    assert not torch.allclose(kd(z_s, z_t), kd(z_s2, z_t2))
    # all ignored: zero, still differentiable
    z = z_s.clone().requires_grad_(True)
    out = kd(z, z_t, torch.full_like(target, 255))
    out.backward()
    assert out.item() == 0.0 and torch.all(z.grad == 0)


def test_pixel_kd_resizes_teacher_and_target():
    g = _gen(2)
    z_s, z_t = torch.randn(2, 5, 4, 4, generator=g), torch.randn(2, 5, 8, 8, generator=g)
    target = torch.randint(0, 5, (2, 16, 16), generator=g)
    target[:, :8] = 255
    kd = PixelKD()
    z_t_small = F.interpolate(z_t, size=(4, 4), mode="bilinear", align_corners=False)
    t_small = F.interpolate(target[:, None].float(), size=(4, 4), mode="nearest")[:, 0].long()
    assert kd(z_s, z_t, target).item() == pytest.approx(ref_pixel_kd(z_s, z_t_small, t_small, 1.0), rel=1e-5)


# ---------------------------------------------------------------- CWD
def ref_cwd(z_s, z_t, T):
    B, K = z_s.shape[:2]
    total = 0.0
    for b in range(B):
        for k in range(K):
            p = torch.softmax(z_t[b, k].flatten().double() / T, 0)
            q = torch.softmax(z_s[b, k].flatten().double() / T, 0)
            total += _kl(p, q)
    return T * T * total / (B * K)


@pytest.mark.parametrize("B,K", [(1, 2), (3, 7)])
def test_cwd_reference(B, K):
    g = _gen(B + K)
    z_s, z_t = torch.randn(B, K, 5, 6, generator=g), torch.randn(B, K, 5, 6, generator=g)
    assert ChannelWiseKD(T=4.0)(z_s, z_t).item() == pytest.approx(ref_cwd(z_s, z_t, 4.0), rel=1e-5)
    assert ChannelWiseKD(T=1.0)(z_s, z_t).item() == pytest.approx(ref_cwd(z_s, z_t, 1.0), rel=1e-5)


def test_cwd_adapter():
    g = _gen(3)
    f_s, f_t = torch.randn(2, 6, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    cwd = ChannelWiseKD(T=2.0, student_channels=6, teacher_channels=4)
    assert isinstance(cwd.adapter, torch.nn.Conv2d) and cwd.adapter.kernel_size == (1, 1)
    loss = cwd(f_s, f_t)
    with torch.no_grad():
        ref = ref_cwd(cwd.adapter(f_s), f_t, 2.0)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    loss.backward()
    assert cwd.adapter.weight.grad is not None
    assert ChannelWiseKD().adapter is None


# ---------------------------------------------------------------- PairwiseKD
def ref_pairwise(f_s, f_t, patch):
    if patch > 1:
        f_s = F.max_pool2d(f_s, patch, patch, ceil_mode=True)
        f_t = F.max_pool2d(f_t, patch, patch, ceil_mode=True)
    total = 0.0
    B = f_s.shape[0]
    for b in range(B):
        s = F.normalize(f_s[b].flatten(1).double().t(), dim=1)  # N x C_s
        t = F.normalize(f_t[b].flatten(1).double().t(), dim=1)  # N x C_t
        a_s, a_t = s @ s.t(), t @ t.t()  # explicit N x N
        n = s.shape[0]
        total += float(((a_s - a_t) ** 2).sum()) / (n * n)
    return total / B


@pytest.mark.parametrize("patch", [1, 2])
@pytest.mark.parametrize("B,C_s,C_t", [(1, 4, 4), (3, 3, 7), (2, 8, 5)])
def test_pairwise_reference(patch, B, C_s, C_t):
    g = _gen(patch * 100 + B * 10 + C_s)
    f_s, f_t = torch.randn(B, C_s, 8, 8, generator=g), torch.randn(B, C_t, 8, 8, generator=g)
    loss = PairwiseKD(patch=patch)(f_s, f_t)
    assert loss.item() == pytest.approx(ref_pairwise(f_s, f_t, patch), rel=1e-6, abs=1e-10)


def test_pairwise_odd_size_and_teacher_resize():
    g = _gen(4)
    f_s, f_t = torch.randn(2, 3, 7, 5, generator=g), torch.randn(2, 6, 14, 10, generator=g)
    f_t_small = F.interpolate(f_t, size=(7, 5), mode="bilinear", align_corners=False)
    loss = PairwiseKD(patch=2)(f_s, f_t)
    assert loss.item() == pytest.approx(ref_pairwise(f_s, f_t_small, 2), rel=1e-6)


# ---------------------------------------------------------------- ICSD
def ref_ics(z, tau):
    B, K = z.shape[:2]
    out = torch.zeros(B, K, K, dtype=torch.float64)
    for b in range(B):
        P = [torch.softmax(z[b, c].flatten().double() / tau, 0) for c in range(K)]
        for i in range(K):
            for j in range(K):
                out[b, i, j] = _kl(P[i], P[j])
            out[b, i] /= out[b, i].norm().clamp_min(1e-12)
    return out


@pytest.mark.parametrize("B,K", [(1, 2), (3, 7)])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_icsd_reference(B, K, tau):
    g = _gen(B * 7 + K)
    z_s, z_t = torch.randn(B, K, 6, 5, generator=g), torch.randn(B, K, 6, 5, generator=g)
    ics_s = inter_class_similarity(z_s, tau)
    assert torch.allclose(ics_s.double(), ref_ics(z_s, tau), atol=1e-5)
    ref_loss = float(((ref_ics(z_s, tau) - ref_ics(z_t, tau)) ** 2).mean())
    assert InterClassSimilarityKD(tau)(z_s, z_t).item() == pytest.approx(ref_loss, rel=1e-4, abs=1e-8)


def test_icsd_not_symmetric():
    g = _gen(5)
    z = torch.randn(2, 5, 8, 8, generator=g) * 2
    raw = inter_class_similarity(z, normalize=False)
    assert not torch.allclose(raw, raw.transpose(1, 2), atol=1e-4)
    assert torch.allclose(torch.diagonal(raw, dim1=1, dim2=2), torch.zeros(2, 5), atol=1e-5)
    assert (raw >= -1e-6).all()


# ---------------------------------------------------------------- shared properties
def _terms():
    return [
        ("pixel", PixelKD(T=2.0)),
        ("cwd", ChannelWiseKD(T=4.0)),
        ("pair1", PairwiseKD(patch=1)),
        ("pair2", PairwiseKD(patch=2)),
        ("icsd", InterClassSimilarityKD(1.0)),
    ]


@pytest.mark.parametrize("name,term", _terms())
@pytest.mark.parametrize("B,K", [(1, 2), (3, 7)])
def test_zero_when_equal_and_no_teacher_grad(name, term, B, K):
    g = _gen(6)
    z = torch.randn(B, K, 8, 8, generator=g)
    assert term(z, z.clone()).abs().item() < 1e-6
    z_s = torch.randn(B, K, 8, 8, generator=g).requires_grad_(True)
    z_t = torch.randn(B, K, 8, 8, generator=g).requires_grad_(True)
    loss = term(z_s, z_t)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert z_t.grad is None
    assert z_s.grad is not None and torch.isfinite(z_s.grad).all() and z_s.grad.abs().sum() > 0


# ---------------------------------------------------------------- schedules
def test_schedules():
    const = WeightSchedule("constant", value=3.0)
    assert [const(p) for p in (0, 0.5, 1)] == [3.0, 3.0, 3.0]
    lin = WeightSchedule("linear", start=10.0, end=0.0)
    assert [lin(p) for p in (0, 0.5, 1)] == [10.0, 5.0, 0.0]
    assert lin(-1) == 10.0 and lin(2) == 0.0  # clamped
    late, early = ALW("late"), ALW("early")
    assert [late(p) for p in (0, 0.5, 1)] == [0.0, 0.5, 1.0]
    assert [early(p) for p in (0, 0.5, 1)] == [1.0, 0.5, 0.0]
    assert WeightSchedule("alw", value=10.0, side="early")(0.25) == pytest.approx(7.5)
    assert alw_weights(0.0) == (0.0, 1.0) and alw_weights(0.5) == (0.5, 0.5) and alw_weights(1.0) == (1.0, 0.0)
    with pytest.raises(ValueError):
        WeightSchedule("cosine")
    with pytest.raises(ValueError):
        WeightSchedule("alw", side="middle")
