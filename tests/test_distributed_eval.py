"""Distributed evaluation (2 Gloo processes on CPU, launched torchrun-style) equals single-process evaluation exactly.

Run as a script, this file is one rank's worker: ``python test_distributed_eval.py WEIGHTS OUT_JSON`` with the
torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) in the environment.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the worker runs as a plain script
    sys.path.insert(0, str(ROOT))

from segdistill.engine import distributed as dist  # noqa: E402
from segdistill.engine.distributed import ShardSampler  # noqa: E402
from segdistill.engine.evaluate import evaluate  # noqa: E402
from segdistill.models.output import SegOutput  # noqa: E402

K, IGNORE = 4, 255


class TinySeg(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, K, 1))

    def forward(self, x):
        return SegOutput(logits=self.net(x))


class TinyData(torch.utils.data.Dataset):
    """7 samples (odd, so the shards differ in length), with ignored pixels; same content in every process."""

    def __init__(self, n=7, size=(10, 14)):
        self.n, self.size = n, size

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(100 + i)
        mask = torch.randint(0, K + 1, self.size, generator=g)
        mask[mask == K] = IGNORE
        return {"image": torch.randn(3, *self.size, generator=g), "mask": mask, "name": f"img{i}"}


def worker(weights: str, out_json: str) -> None:
    device = dist.setup_distributed()
    assert dist.is_dist() and dist.world_size() == 2
    model = TinySeg()
    model.load_state_dict(torch.load(weights))
    metrics = evaluate(model, TinyData(), None, device, K, IGNORE, batch_size=2, progress=False, return_confusion=True)
    metrics["shard"] = list(ShardSampler(7))
    if dist.is_main():
        Path(out_json).write_text(json.dumps(metrics))
    dist.barrier()
    dist.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shard_sampler_splits_without_padding():
    shards = [list(ShardSampler(7, rank=r, world_size=3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert [len(ShardSampler(7, rank=r, world_size=3)) for r in range(3)] == [3, 2, 2]
    assert list(ShardSampler(range(5))) == [0, 1, 2, 3, 4]  # single process: everything


def test_two_process_gloo_eval_equals_single_process(tmp_path):
    torch.manual_seed(0)
    model = TinySeg()
    with torch.no_grad():  # non-trivial BN statistics, so eval mode matters
        model.net[1].running_mean.uniform_(-0.5, 0.5)
        model.net[1].running_var.uniform_(0.5, 2.0)
    weights = tmp_path / "weights.pt"
    torch.save(model.state_dict(), weights)
    out_json = tmp_path / "metrics.json"

    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen([sys.executable, __file__, str(weights), str(out_json)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=90)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)

    distributed = json.loads(out_json.read_text())
    assert distributed["shard"] == [0, 2, 4, 6]  # rank 0's shard
    single = evaluate(model, TinyData(), None, "cpu", K, IGNORE, batch_size=2, progress=False, return_confusion=True)
    assert distributed["confusion"] == single["confusion"]
    assert distributed["num_pixels"] == single["num_pixels"] == sum(map(sum, single["confusion"]))
    assert distributed["miou"] == single["miou"]


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
