"""Extra memory of SKD's pair-wise loss on a 512x1024 crop with a ResNet-18 student (issue: must fit in 2 GB).

For each case a fresh process builds the student's feature map (DeepLabV3-ResNet-18 at output stride 8: the
``pre_logits`` map, 256 channels at 64x128 for a 512x1024 crop, read from the model's feature_channels/strides) and a
teacher feature map (512 channels, the width of a ResNet-101 DeepLabV3 head's input), then computes the loss and its
backward. Extra memory = the process's peak RSS after loss + backward minus its peak before (``ru_maxrss``), i.e. what
the loss adds on top of the features. ``gram`` is segdistill's PairwiseKD (exact, O(C^2) memory); ``naive`` is the
N x N formulation of the paper (sum (A_s - A_t)^2 / N^2 with A = normalised node similarity), for comparison.

    python benchmarks/skd_pairwise_memory.py
"""
from __future__ import annotations

import json
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CASES = [(impl, patch, batch) for batch in (1, 8) for patch in (1, 2) for impl in ("gram", "naive")]
CROP = (512, 1024)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(impl: str, patch: int, batch: int) -> dict:
    import torch
    import torch.nn.functional as F

    from segdistill.distill import PairwiseKD
    from segdistill.models import build_model

    torch.set_num_threads(2)
    torch.manual_seed(0)
    student = build_model("deeplabv3_resnet18", 19)  # the student's feature shape at this crop, without running it
    stride = student.feature_strides["pre_logits"]  # (a forward here would raise the peak we measure against)
    c_s, h, w = student.feature_channels["pre_logits"], -(-CROP[0] // stride), -(-CROP[1] // stride)
    del student
    f_s = torch.randn(batch, c_s, h, w, requires_grad=True)
    f_t = torch.randn(batch, 512, h, w)
    before = peak_mb()
    t0 = time.perf_counter()
    if impl == "gram":
        loss = PairwiseKD(patch=patch)(f_s, f_t)
    else:
        def sim(f):
            if patch > 1:
                f = F.max_pool2d(f, patch, patch, ceil_mode=True)
            f = F.normalize(f.flatten(2), dim=1)
            return f.transpose(1, 2) @ f  # (B, N, N)

        a_s, a_t = sim(f_s), sim(f_t)
        loss = ((a_s - a_t) ** 2).sum((1, 2)).div(a_s.shape[-1] ** 2).mean()
    loss.backward()
    seconds = time.perf_counter() - t0
    n = -(-h // patch) * -(-w // patch)
    return {"impl": impl, "patch": patch, "batch": batch, "nodes": n, "student_feature": [c_s, h, w], "teacher_channels": 512,
            "extra_mb": peak_mb() - before, "seconds": seconds, "loss": float(loss)}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        impl, patch, batch = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        print(json.dumps(one(impl, patch, batch)))
        return
    print(f"command: python benchmarks/skd_pairwise_memory.py {shlex.join(sys.argv[1:])}")
    print(f"crop {CROP[0]}x{CROP[1]}, student DeepLabV3-ResNet-18 OS 8 pre_logits, teacher features 512 channels, fp32, 2 threads")
    print("| formulation | node patch | batch | nodes N per image | extra memory MB (loss + backward) | time s |")
    print("|---|---|---|---|---|---|")
    results = []
    for impl, patch, batch in CASES:
        p = subprocess.run([sys.executable, __file__, "--one", impl, str(patch), str(batch)], capture_output=True, text=True)
        if p.returncode != 0:
            print(f"| {impl} | {patch} | {batch} | - | failed: {p.stderr.strip().splitlines()[-1][:80]} | - |")
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"| {impl} | {patch}x{patch} | {batch} | {r['nodes']} | {r['extra_mb']:.0f} | {r['seconds']:.2f} |", flush=True)
    for g in (r for r in results if r["impl"] == "gram"):
        match = [r for r in results if r["impl"] == "naive" and r["patch"] == g["patch"] and r["batch"] == g["batch"]]
        if match:
            print(f"patch {g['patch']} batch {g['batch']}: gram loss {g['loss']:.6g} vs naive {match[0]['loss']:.6g}")


if __name__ == "__main__":
    main()
