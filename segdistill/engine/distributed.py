"""Small helpers around ``torch.distributed``; every one of them also works in a plain single process.

Launch with ``torchrun --nproc_per_node=N ...``: :func:`setup_distributed` reads the ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` variables that torchrun sets. Evaluation shards a split with :class:`ShardSampler`, which gives each
sample to exactly one rank (no padding, no duplicates), so a distributed evaluation's summed confusion matrix is
exactly the single-process one.
"""
from __future__ import annotations

import os
from typing import Iterator, Sized

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def is_dist() -> bool:
    """True when a process group is initialised (and there is something to synchronise with)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_dist() else 1


def local_rank() -> int:
    """This process's rank on its machine (torchrun's ``LOCAL_RANK``; 0 without torchrun): its GPU index."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """True on rank 0: the process that logs, draws progress bars and writes files."""
    return rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place, and return it; a no-op in a single process.

    With the NCCL backend a CPU tensor is moved to the current CUDA device for the reduction and copied back.
    """
    if not is_dist():
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
        tensor.copy_(on_gpu.cpu())
    else:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_gradients(parameters) -> None:
    """Average the gradients of ``parameters`` over ranks (for modules outside DDP: adapters, projectors,
    discriminators). A parameter without a gradient on this rank counts as a zero gradient; a no-op in one process."""
    if not is_dist():
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_sum(flat)
    flat /= world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def barrier() -> None:
    """Wait for every rank; a no-op in a single process."""
    if is_dist():
        dist.barrier()


def setup_distributed(backend: str | None = None) -> torch.device:
    """Join the process group that torchrun describes and return this process's device.

    Without torchrun (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) nothing is initialised and the device is ``cuda:0`` when a
    GPU is available, else ``cpu``. Otherwise the process group is initialised from the environment (``env://``)
    with ``backend``, by default NCCL when CUDA is available and Gloo otherwise; each process uses GPU ``LOCAL_RANK``.
    """
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not is_dist():
        dist.init_process_group(backend=backend or ("nccl" if cuda else "gloo"), init_method="env://")
    return device


def cleanup() -> None:
    """Leave the process group (if any)."""
    if is_dist():
        dist.destroy_process_group()


_get_rank, _get_world_size = rank, world_size  # reachable where arguments shadow the names


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` of a dataset: every sample goes to exactly one rank.

    Unlike ``DistributedSampler`` nothing is padded or repeated, so shards may differ in length by one and the
    union of all shards is the dataset exactly once. Meant for evaluation, where a duplicated sample would
    change the metrics. ``rank``/``world_size`` default to this process's.
    """

    def __init__(self, data: Sized | int, rank: int | None = None, world_size: int | None = None):
        self.length = data if isinstance(data, int) else len(data)
        self.rank = _get_rank() if rank is None else rank
        self.world_size = _get_world_size() if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside [0, {self.world_size})")

    def _indices(self) -> range:
        return range(self.rank, self.length, self.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())
