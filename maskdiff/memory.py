"""Memory estimates checked before allocation: refuse a size the machine cannot hold, with the
estimate, instead of being killed by the kernel minutes later (docs/architecture.md,
"Reliability").

The limit is ``MASKDIFF_MEMORY_LIMIT`` (bytes, or a number with KB/MB/GB/KiB/MiB/GiB) when set,
else the memory the operating system reports available (``MemAvailable``), else no limit.
Estimates are rough lower bounds of the dominant allocations, so a refusal is never wrong by
more than the estimate's constant; they are not promises that a smaller size fits.
"""

from __future__ import annotations

import os
import re

LIMIT_ENV = "MASKDIFF_MEMORY_LIMIT"
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """``"4GiB"`` -> 4294967296; a ValueError naming the text otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{LIMIT_ENV} must be a size such as 8GiB or 2000000000, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def available_bytes(device: str = "cpu") -> tuple[int | None, str]:
    """The memory a computation may use, and where that number comes from."""
    if os.environ.get(LIMIT_ENV):
        return parse_bytes(os.environ[LIMIT_ENV]), LIMIT_ENV
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            index = torch.device(device).index
            return int(torch.cuda.mem_get_info(index if index is not None else 0)[0]), "free GPU memory"
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available memory"
    except OSError:
        pass
    return None, "no limit known"


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def require(n_bytes: float, what: str, device: str = "cpu") -> None:
    """A ValueError when ``what`` needs about ``n_bytes`` and the limit is lower."""
    limit, source = available_bytes(device)
    if limit is not None and n_bytes > limit:
        raise ValueError(f"{what} needs about {gib(n_bytes)} of memory, more than the "
                         f"{gib(limit)} of {source}; make it smaller (or set {LIMIT_ENV})")


def transformer_step_bytes(*, rows: int, length: int, d_model: int, n_layers: int,
                           n_heads: int, vocab: int) -> float:
    """Lower bound of a training step's activations: per row and position, each layer's saved
    hidden states (4·d) and attention probabilities (heads·L), and the logits with their
    log-softmax (2·V), in float32."""
    per_position = n_layers * (4 * d_model + n_heads * length) + 2 * vocab
    return 4.0 * rows * length * per_position
