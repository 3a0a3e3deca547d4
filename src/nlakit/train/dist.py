"""Data parallelism without wrappers: under `torchrun`/`accelerate launch` each rank rolls out its own slice of the
step's activations and gradients are averaged by all-reduce before the optimizer step (what DDP does, but it also
works around `generate` and two models). gloo on CPU, nccl on CUDA."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init(device: str = "cpu") -> tuple[int, int]:
    """(rank, world_size); initialises the process group when launched with several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:  # one GPU per process: "cuda" then means this rank's own
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad /= world


def mean_scalars(values: dict[str, float]) -> dict[str, float]:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    keys = sorted(values)
    # NCCL reduces GPU tensors only
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, t.tolist(), strict=True)}


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
