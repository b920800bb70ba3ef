"""PyTorch's own distributed engine, thinly: DDP under ``torchrun``, gloo on CPU, NCCL on GPU.

Every helper is a no-op in a single process, so the trainer has one code path.

Collectives time out: a rank that stops or dies makes the others fail after
``MASKDIFF_COLLECTIVE_TIMEOUT`` seconds (default 600) with a :class:`TrainingError` saying so,
instead of waiting forever; the trainer runs each step inside :class:`timed`, so a stall in
DDP's own gradient all-reduce during backward ends the same way (docs/architecture.md).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from maskdiff.training.errors import TrainingError

TIMEOUT_ENV = "MASKDIFF_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0


def collective_timeout() -> float:
    """Seconds a collective may wait for the other ranks (``MASKDIFF_COLLECTIVE_TIMEOUT``)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


def init_from_env(device: str = "cpu") -> None:
    """Join the process group ``torchrun`` describes (WORLD_SIZE > 1); idempotent."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return
    if dist.is_initialized():
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=collective_timeout()))


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_device(device: str) -> torch.device:
    """``cuda`` means this rank's GPU under torchrun; a CUDA device without CUDA is a ValueError."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but this PyTorch sees no CUDA device "
                         f"(torch.cuda.is_available() is False); use --device cpu")
    if device == "cuda" and dist.is_available() and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when there is more than one rank."""
    if rank_and_world()[1] == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _wire(x: torch.Tensor) -> torch.Tensor:
    """``x`` on the device the backend reduces on (NCCL: this rank's GPU; gloo: the CPU)."""
    if dist.get_backend() == "nccl":
        return x.to(torch.device("cuda", torch.cuda.current_device()))
    return x.cpu()


def gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate the ranks' tensors along dim 0 in rank order; their lengths may differ
    (a rank may drop non-finite values). The result lies on ``x``'s device."""
    world = rank_and_world()[1]
    if world == 1:
        return x
    local = _wire(x.contiguous())
    sizes = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(world)]
    with timed("all_gather"):
        dist.all_gather(sizes, torch.tensor([len(x)], dtype=torch.long, device=local.device))
    lengths = [int(n) for n in sizes]
    padded = local.new_zeros((max(lengths), *x.shape[1:]))
    padded[: len(x)] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    with timed("all_gather"):
        dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, lengths)]).to(x.device)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over ranks (a new tensor on ``x``'s device; ``x`` itself alone)."""
    if rank_and_world()[1] == 1:
        return x
    total = _wire(x.clone())
    with timed("all_reduce"):
        dist.all_reduce(total)
    return total.to(x.device)


class timed:
    """Turn a collective's timeout (a RuntimeError of the backend) into a TrainingError; also
    around code that runs collectives of its own (a DDP backward's gradient all-reduce)."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, err, tb) -> bool:
        if kind is None or not issubclass(kind, RuntimeError) or isinstance(err, TrainingError):
            return False
        message = str(err).lower()
        rank, world = rank_and_world()
        if world > 1 and ("timed out" in message or "timeout" in message):
            raise TrainingError(
                f"rank {rank}/{world}: {self.what} waited more than {collective_timeout():g} s for "
                f"the other ranks (one stopped or died?); set {TIMEOUT_ENV} to wait longer") from err
        return False
