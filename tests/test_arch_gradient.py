"""benchmarks/arch_gradient.py's pieces: per-batch gradients of every architecture-loss term, and their statistics."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_search_hook import search_cfg

from segdistill.engine.hooks import build_hooks
from segdistill.engine.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from arch_gradient import stats, t_tail, term_gradients  # noqa: E402


def test_t_statistics_and_the_noise_tail():
    means, ts = stats([[1.0, 0.0, 2.0], [3.0, 0.0, 2.0]])
    assert means == [2.0, 0.0, 2.0]
    assert ts[0] == pytest.approx(2.0 / (2 ** 0.5 / 2 ** 0.5))  # sd sqrt(2), n 2
    assert ts[1:] == [0.0, 0.0]  # a gradient that never varies has no t
    assert t_tail(10_000) == pytest.approx(0.0455, abs=5e-4)  # the normal's two-sided tail beyond 2
    assert t_tail(23) == pytest.approx(0.0573, abs=5e-4)


def test_term_gradients_collects_every_term_per_batch(tmp_path):
    cfg = search_cfg(tmp_path, iters=2)
    hooks = build_hooks(cfg)
    trainer = Trainer(cfg, hooks)
    hook = next(h for h in hooks if h.name == "search")
    before = [p.detach().clone() for p in hook.supernet.arch_parameters()]
    grads = term_gradients(hook, trainer, batches=3, progress=False)
    assert {"arch/ce", "arch/lat_torch-cpu"} <= set(grads)
    ce = grads["arch/ce"]
    assert "alpha.0" in ce and all(len(v) == 3 for v in ce.values())
    assert any(abs(x) > 0 for b in ce["alpha.0"] for x in b)  # the data term reaches the logits
    assert ce["alpha.0"][0] != ce["alpha.0"][1]  # and changes with the batch
    lat = grads["arch/lat_torch-cpu"]["alpha.0"]
    assert lat[0] == lat[1] == lat[2]  # the latency term does not
    assert all((a == p).all() for a, p in zip(before, hook.supernet.arch_parameters()))  # nothing was stepped
