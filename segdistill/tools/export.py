"""ONNX export with a parity check against PyTorch.

The exported graph is :class:`DeployModel`: image in (``"image"``, (B, 3, H, W), normalised), logits at the input size
out (``"logits"``, (B, K, H, W)). Training-only parts (aux heads, distillation projectors) are left out because the
model is exported in eval mode and only ``SegOutput.logits`` is returned.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .._optional import require
from ..errors import SegDistillError
from ..latency.standalone import export_onnx_file, ort_session  # noqa: F401  (ort_session re-exported)
from ..models.output import DeployModel, deploy_copy


class ExportError(SegDistillError):
    """The ONNX export failed, or its outputs differ from PyTorch's by more than the tolerance.

    ``result`` holds :func:`export_onnx`'s report (``ok=False`` and ``message``) when the parity check failed.
    """

    def __init__(self, message: str, result: dict | None = None):
        super().__init__(message)
        self.result = result


def _export(deploy: DeployModel, example: torch.Tensor, path: str, opset: int | None, dynamic_batch: bool) -> str:
    """torch.onnx.export with the dynamo exporter, falling back to the TorchScript one; returns which was used
    (the ONNX Runtime latency platform exports its blocks with the same function)."""
    return export_onnx_file(deploy, (example,), path, "auto", ["image"], ["logits"], opset, dynamic_batch)


def compare_onnx(deploy: DeployModel, path: str | os.PathLike, inputs: list[torch.Tensor]) -> dict:
    """Run PyTorch and onnxruntime on each input; max/mean absolute difference and argmax agreement."""
    require("onnxruntime", "onnx", "checking an ONNX export against PyTorch")
    sess = ort_session(path)
    max_diff, sum_diff, n, agree, pixels = 0.0, 0.0, 0, 0, 0
    for x in inputs:
        with torch.no_grad():
            ref = deploy(x).float().numpy()
        out = sess.run(["logits"], {"image": x.numpy()})[0]
        if out.shape != ref.shape:
            raise ExportError(f"ONNX output shape {out.shape} != PyTorch output shape {ref.shape}")
        diff = np.abs(out.astype(np.float64) - ref)
        max_diff, sum_diff, n = max(max_diff, float(diff.max())), sum_diff + float(diff.sum()), n + diff.size
        agree += int((out.argmax(1) == ref.argmax(1)).sum())
        pixels += ref.shape[0] * ref.shape[2] * ref.shape[3]
    return {"max_abs_diff": max_diff, "mean_abs_diff": sum_diff / n, "argmax_agreement": agree / pixels}


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_shape=(1, 3, 180, 240),
    opset: int | None = None,
    dynamic_batch: bool = False,
    atol: float = 1e-3,
    strict: bool = True,
) -> dict:
    """Export ``DeployModel(model)`` to ``path`` and check it against PyTorch on a random input.

    The file is written atomically (a temporary file beside it, then ``os.replace``). Returns
    ``dict(path, exporter, input_shape, max_abs_diff, mean_abs_diff, argmax_agreement, ok, message)``.
    With ``dynamic_batch`` the batch axis is dynamic and the check also runs a batch one larger.
    When the largest difference exceeds ``atol``: ``strict`` raises :class:`ExportError` (nothing is written);
    otherwise the file is written and the report has ``ok=False`` and the message.
    """
    require("onnxscript", "onnx", "ONNX export")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deploy = deploy_copy(model)
    shape = tuple(int(s) for s in input_shape)
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(shape, generator=gen)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        exporter = _export(deploy, example, str(tmp), opset, dynamic_batch)
        inputs = [torch.randn(shape, generator=gen)]
        if dynamic_batch:
            inputs.append(torch.randn((shape[0] + 1, *shape[1:]), generator=gen))
        result = {"path": str(path), "exporter": exporter, "input_shape": list(shape), **compare_onnx(deploy, tmp, inputs)}
        result["ok"] = result["max_abs_diff"] <= atol
        result["message"] = (
            f"ONNX matches PyTorch: max |diff| {result['max_abs_diff']:.2e} <= atol {atol:g}" if result["ok"] else
            f"ONNX output differs from PyTorch by up to {result['max_abs_diff']:.2e} (> atol {atol:g}); "
            f"argmax agreement {100 * result['argmax_agreement']:.2f}%"
        )
        if not result["ok"] and strict:
            raise ExportError(f"{path}: {result['message']}", result)
        os.replace(tmp, path)
        return result
    finally:
        tmp.unlink(missing_ok=True)
