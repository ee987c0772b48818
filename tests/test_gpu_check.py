"""The GPU check script runs its paths on the CPU (CUDA-only checks skipped), so it still works when a GPU comes."""
import json

import pytest

from segdistill.tools import gpu_check


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_and_writes_a_summary(tmp_path, monkeypatch):
    small = gpu_check.tiny_config

    def tinier(out_dir, device, iters=2):
        cfg = small(out_dir, device, iters)
        cfg.data.synthetic_size, cfg.data.crop_size, cfg.data.synthetic_train = [48, 64], [48, 64], 8
        cfg.model.width_mult, cfg.train.threads = 0.25, 1
        return cfg

    monkeypatch.setattr(gpu_check, "tiny_config", tinier)
    summary = gpu_check.run_checks(tmp_path, device="cpu")
    checks = summary["checks"]
    assert json.loads((tmp_path / "gpu_check.json").read_text())["checks"].keys() == checks.keys()
    for name in ("env", "train_bf16", "train_fp16", "distill_cache"):
        assert checks[name]["status"] == "ok", checks[name]
    for name in ("profile_cuda", "lut_cuda", "lut_cuda_fp16", "ddp_nccl"):
        assert checks[name]["status"] == "skipped"
    assert summary["ok"], {k: v.get("error") for k, v in checks.items()}


def test_gpu_check_refuses_cuda_without_a_gpu(tmp_path):
    if gpu_check.torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_check.run_checks(tmp_path, device="cuda")
