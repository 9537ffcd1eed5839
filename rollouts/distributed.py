"""Data-parallel training under torchrun: process group set-up, gradient averaging, metric reduction.

Launch: `torchrun --nproc-per-node N scripts/train_ppo.py ...` (N GPUs with NCCL, or N CPU processes with gloo).
Without torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK) everything here is a no-op for one process.

What data parallelism means here (the DistributedDataParallel contract, written out so that it also covers the
policy's generate/evaluate_actions methods, which DDP's forward hook would not see):
- every rank holds the same weights (same seed at build, broadcast from rank 0 after loading a checkpoint);
- rollouts and datasets are sharded: each rank runs its own envs (its seeds offset by rank) or dataset slice;
- after the backward passes of an optimizer step's micro-batches, and before clipping and the step itself,
  gradients are averaged with one all-reduce of the flattened trainable gradients, so every rank takes the
  identical step;
- rank 0 alone writes checkpoints and logs; the others send it their RNG states.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (NCCL on CUDA, gloo on CPU); pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Average .grad over ranks in place (one flattened all-reduce). Params without a grad count as zeros."""
    if not _active():
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1).float() for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def mean(values: dict[str, float], device: torch.device | None = None) -> dict[str, float]:
    """Mean of each scalar over ranks (identity on one process). NaN-safe: NaN stays NaN."""
    if not _active() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def sum_(value: float, device: torch.device | None = None) -> float:
    if not _active():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std of all elements of x over all ranks."""
    x = x.detach().double().reshape(-1)
    stats = torch.stack([x.sum(), (x * x).sum(), torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device)])
    if _active():
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
    s, ss, n = stats.tolist()
    m = s / n
    var = max(ss / n - m * m, 0.0)
    return torch.tensor(m), torch.tensor(var**0.5)


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's `obj` on rank 0 (a one-element list on one process); None on the other ranks."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def scatter_object(objs: list[Any] | None) -> Any:
    """Rank r gets objs[r] from rank 0 (objs is ignored on the other ranks)."""
    if not _active():
        return objs[0]
    out = [None]
    dist.scatter_object_list(out, objs if dist.get_rank() == 0 else None, src=0)
    return out[0]


def broadcast_object(obj: Any) -> Any:
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_params(params: Iterable[torch.Tensor]) -> None:
    """Copy rank 0's values of these tensors to every rank."""
    if not _active():
        return
    for p in params:
        dist.broadcast(p.data, src=0)


def any_flag(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank when any rank passes True (used so that all ranks stop together on a NaN loss)."""
    if not _active():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier() -> None:
    if _active():
        dist.barrier()
