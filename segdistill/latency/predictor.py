"""Latency prediction from a table: sum of block entries, a fitted correction, and the expected latency of a search.

* **Raw prediction** of a network: the sum of its nodes' table entries (library blocks and fixed parts).
* **Correction**, fitted per platform on sampled networks measured whole (``segdistill latency fit`` or the report),
  stored in the table under ``correction``. It absorbs what a sum of isolated blocks misses: per-call overhead, cache
  state between blocks, and what a runtime does across block boundaries (ONNX Runtime keeps activations in its blocked
  NCHWc layout and fuses ops inside one graph, while an isolated block converts layout at both ends, a cost that grows
  with the block's input and output size and differs by kind). Features of a network, all sums over its nodes:
  ``raw`` (ms), ``const`` (1), ``count`` (nodes that cost something), ``io`` (input + output elements, millions) and
  ``io:GROUP`` (the same per kind group, :data:`GROUPS`). Candidates, each fitted to minimise the *relative* error:

  - ``linear``:            ``y = a * raw + b``                       (the per-platform fit, always available)
  - ``power``:             ``y = A * raw ** B``                      (costs that grow faster or slower than the sum)
  - ``linear+count``:      ``y = a * raw + b + c * count``           (a per-block overhead or saving)
  - ``linear+io``:         ``y = a * raw + b + d * io``              (a per-element boundary cost or saving)
  - ``linear+io-by-kind``: ``y = a * raw + b + sum_g d_g * io:g``    (the same, per kind group)

  A per-kind *scale* (``a_g * raw:g``, alone or with ``io:g``) was tried on the report's measurements: it won the
  cross-validation on random networks for onnxruntime-cpu but cut the zoo models within +-10% from 100% to 36%, so it
  is not a candidate (benchmarks/RESULTS.md).

  :func:`select_correction` picks ``linear`` unless another one lowers the k-fold cross-validated mean absolute
  percentage error by at least 5% of it and 0.05 points ("only if it pays"); ``none`` (``y = raw``) is reported for
  reference.
* **Expected latency** for a differentiable search: layer ``l`` has candidate ops ``o`` with table latencies
  ``t_lo`` and architecture logits ``alpha_l``; every feature is replaced by its expectation under
  ``p_l = softmax(alpha_l)`` (``E[raw] = sum(fixed) + sum_l p_l . t_l``, likewise count and io), then the correction.
  Under ``linear`` the gradient w.r.t. ``alpha_lo`` is ``a * p_lo * (t_lo - E_l[t])``: positive for ops slower than
  the layer's average.
"""
from __future__ import annotations

import math
import random
from typing import Sequence

import numpy as np
import torch

from ..errors import LatencyError
from . import standalone as core
from .lut import LatencyTable
from .network import NetSpec

GROUPS = {  # block kind -> group of the io-by-kind correction; fixed parts are "fixed", unknown kinds "other"
    "conv": "conv", "dilconv": "conv", "skip": "conv", "dwsep": "dwsep", "mbconv": "mbconv", "zoomconv": "zoomconv",
    "basic": "res", "bottleneck": "res", "maxpool": "pool", "avgpool": "pool", "gpool": "gpool", "resize": "resize",
    "add": "merge", "concat": "merge",
}
_ALL_GROUPS = sorted(set(GROUPS.values()) | {"fixed", "other"})
MODELS = {
    "none": [], "linear": ["raw", "const"], "power": ["raw"], "linear+count": ["raw", "const", "count"],
    "linear+io": ["raw", "const", "io"], "linear+io-by-kind": ["raw", "const"] + [f"io:{g}" for g in _ALL_GROUPS],
}
CORRECTIONS = tuple(MODELS)
PAYS = 0.05  # a more complex correction must cut the CV MAPE by this fraction of it ...
PAYS_MIN = 0.05  # ... and by at least this many percentage points


def group_of(key: str) -> str:
    if key.startswith(core.FIXED_PREFIX):
        return "fixed"
    return GROUPS.get(key.split(":", 1)[0], "other")


def _matrix(model: str, feats: Sequence[dict]) -> np.ndarray:
    return np.array([[1.0 if name == "const" else float(f.get(name, 0.0)) for name in MODELS[model]] for f in feats],
                    dtype=np.float64)


def fit_correction(model: str, feats: Sequence[dict], measured: Sequence[float]) -> dict:
    """``{name: coefficient}`` of a correction ``model`` minimising the relative error over networks described by
    feature dicts (``raw``, ``count``, ``io``, ``io:GROUP``) with ``measured`` latencies."""
    if model not in MODELS:
        raise LatencyError(f"unknown correction model {model!r}; known: {', '.join(MODELS)}")
    y = np.asarray(measured, dtype=np.float64)
    if model == "none":
        return {}
    X = _matrix(model, feats)
    used = [j for j in range(X.shape[1]) if np.any(X[:, j])]
    if len(y) < len(used) + 1:
        raise LatencyError(f"fitting a {model} correction needs more than {len(used)} measured networks, got {len(y)}")
    if model == "power":  # log y = log A + B log raw: least squares on log-latency = on relative error
        if np.any(X[:, 0] <= 0) or np.any(y <= 0):
            raise LatencyError("a power correction needs positive raw sums and latencies")
        B, logA = np.polyfit(np.log(X[:, 0]), np.log(y), 1)
        return {"A": float(math.exp(logA)), "B": float(B)}
    coef = np.zeros(X.shape[1])
    coef[used], *_ = np.linalg.lstsq(X[:, used] / y[:, None], np.ones_like(y), rcond=None)  # rows / y: relative error
    return {name: float(c) for name, c in zip(MODELS[model], coef)}


def apply_correction(correction: dict | None, feats: dict):
    """Corrected latency (ms) from a network's features: floats, numpy arrays or torch tensors (differentiable)."""
    if not correction or correction["model"] == "none":
        return feats["raw"]
    c, model = correction["coef"], correction["model"]
    if model not in MODELS:
        raise LatencyError(f"unknown correction model {model!r}; known: {', '.join(MODELS)}")
    if model == "power":
        return c["A"] * feats["raw"] ** c["B"]
    return sum(c[name] * (feats.get(name, 0.0) if name != "const" else 1.0) for name in MODELS[model] if c.get(name))


def _mape(pred, y) -> float:
    pred, y = np.asarray(pred, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.mean(np.abs(pred - y) / y) * 100)


def cross_val_predictions(model: str, feats: Sequence[dict], measured, folds: int = 5, seed: int = 0,
                          groups: Sequence[str] | None = None) -> np.ndarray:
    """Out-of-fold predictions: each network predicted by the correction fitted on the other folds. With ``groups``
    (e.g. a model's name), networks of one group share a fold, so a model is never predicted by a fit that saw it
    at another input size."""
    y = np.asarray(measured, dtype=np.float64)
    keys = list(dict.fromkeys(groups)) if groups is not None else list(range(len(y)))
    random.Random(seed).shuffle(keys)
    k = max(2, min(folds, len(keys)))
    fold_of = {key: i % k for i, key in enumerate(keys)}
    fold = [fold_of[key] for key in (groups if groups is not None else range(len(y)))]
    out = np.empty_like(y)
    for f in range(k):
        train = [i for i in range(len(y)) if fold[i] != f]
        corr = {"model": model, "coef": fit_correction(model, [feats[i] for i in train], y[train])}
        for i in range(len(y)):
            if fold[i] == f:
                out[i] = apply_correction(corr, feats[i])
    return out


def select_correction(feats: Sequence[dict], measured, folds: int = 5, seed: int = 0,
                      groups: Sequence[str] | None = None) -> dict:
    """Fit every candidate on all networks, score each by k-fold CV MAPE, pick ``linear`` unless another pays.

    Returns ``{"model", "coef", "cv_mape": {model: %}, "fitted_on": count, "folds": k,
    "candidates": {model: coef}}``."""
    cv, coefs = {}, {}
    for model in CORRECTIONS:
        try:
            coefs[model] = fit_correction(model, feats, measured)
            pred = cross_val_predictions(model, feats, measured, folds, seed, groups) if model != "none" else \
                [f["raw"] for f in feats]
            cv[model] = _mape(pred, measured)
        except (LatencyError, np.linalg.LinAlgError, ValueError):
            continue
    if "linear" not in cv:
        raise LatencyError(f"cannot fit a linear correction on {len(measured)} networks")
    best = "linear"
    for model in sorted((m for m in cv if m not in ("none", "linear")), key=lambda m: cv[m]):
        if cv[model] <= cv[best] * (1 - PAYS) and cv[best] - cv[model] >= PAYS_MIN:
            best = model
            break
    return {"model": best, "coef": coefs[best], "cv_mape": cv, "fitted_on": len(measured),
            "folds": max(2, min(folds, len(measured))), "candidates": coefs}


class LatencyPredictor:
    """Predicts a network's latency on a table's platform. Missing keys are measured on demand when the table is
    local (``measure=True``), else :class:`~segdistill.latency.lut.MissingBlocksError` names them."""

    def __init__(self, table: LatencyTable, measure: bool = True, progress: bool = False):
        self.table, self.measure, self.progress = table, measure, progress

    def breakdown(self, net: NetSpec) -> dict:
        """Raw sum and its parts: ``raw_ms``, ``blocks_ms`` (library), ``fixed_ms`` (fixed parts), ``n_blocks``
        (nodes that cost something), ``features`` (the correction's inputs) and ``entries`` ([key, ms] per node)."""
        self.table.ensure(net.keys(), measure=self.measure, progress=self.progress)
        entries = [(k, self.table.latency(k)) for k in net.keys()]
        fixed = sum(ms for k, ms in entries if k.startswith(core.FIXED_PREFIX))
        feats = self.features(net.keys())
        return {"raw_ms": feats["raw"], "blocks_ms": feats["raw"] - fixed, "fixed_ms": fixed,
                "n_blocks": int(feats["count"]), "features": feats, "entries": entries}

    def features(self, keys: Sequence[str], weights: Sequence | None = None) -> dict:
        """The correction's features of a set of nodes (each counted with ``weights``, default 1; tensors allowed)."""
        weights = [1.0] * len(keys) if weights is None else weights
        feats = {"raw": 0.0, "const": 1.0, "count": 0.0, "io": 0.0}
        for key, wt in zip(keys, weights):
            if core.is_free(key):
                continue
            io = self.table.io_elems(key) / 1e6
            group, ms = group_of(key), self.table.latency(key)
            feats["raw"] = feats["raw"] + wt * ms
            feats["count"] = feats["count"] + wt
            feats["io"] = feats["io"] + wt * io
            feats[f"io:{group}"] = feats.get(f"io:{group}", 0.0) + wt * io
        return feats

    def predict(self, net: NetSpec, correction: dict | None = ...) -> dict:
        """:meth:`breakdown` plus ``predicted_ms`` (with the table's correction, or the one given; None = raw)."""
        out = self.breakdown(net)
        corr = self.table.correction if correction is ... else correction
        out["predicted_ms"] = float(apply_correction(corr, out["features"]))
        out["correction"] = corr["model"] if corr else "none"
        return out

    def expected(self, layers: Sequence[Sequence[str]], alpha, fixed: Sequence[str] = (),
                 correction: dict | None = ..., fixed_weights=None, layer_weights=None) -> torch.Tensor:
        """Expected latency (ms, a 0-d tensor differentiable w.r.t. ``alpha``) of a network whose layer ``l`` is one of
        the ops ``layers[l]`` with probabilities ``softmax(alpha[l])``, plus the ``fixed`` keys (each counted once, or
        ``fixed_weights[i]`` times: the probability that block i is in the network). ``layer_weights[l]`` (default
        1): the probability that layer ``l`` is in the network at all; given it is, its op follows ``alpha[l]``."""
        if len(alpha) != len(layers):
            raise LatencyError(f"{len(alpha)} architecture weight vectors for {len(layers)} layers")
        if layer_weights is not None and len(layer_weights) != len(layers):
            raise LatencyError(f"{len(layer_weights)} presence weights for {len(layers)} layers")
        keys = [k for layer in layers for k in layer] + list(fixed)
        self.table.ensure(keys, measure=self.measure, progress=self.progress)
        weights: list = [1.0] * len(fixed) if fixed_weights is None else list(fixed_weights)
        if len(weights) != len(fixed):
            raise LatencyError(f"{len(weights)} weights for {len(fixed)} fixed blocks")
        for ops, a, live in zip(layers, alpha, [1.0] * len(layers) if layer_weights is None else layer_weights):
            a = torch.as_tensor(a)
            if a.shape != (len(ops),):
                raise LatencyError(f"architecture weights of shape {tuple(a.shape)} for {len(ops)} candidate ops")
            weights += list(torch.softmax(a, dim=0) * live)
        feats = self.features(list(fixed) + [k for layer in layers for k in layer], weights)
        feats = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in feats.items()}
        corr = self.table.correction if correction is ... else correction
        return apply_correction(corr, feats)
