"""The native trainer's ``metrics.jsonl``: the logging window, the plain progress line, and the
file itself (rewound to the checkpoint's step on resume, appended on rank 0 only), optionally
mirrored as TensorBoard scalars under ``OUT/tensorboard/`` (``train.tensorboard``)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

from maskdiff import jsonio
from maskdiff.fileio import atomic_write_text, naming
from maskdiff.training.stats import StepWindow


class LogWindow(StepWindow):
    """The shared step window plus what only this trainer logs: loss, grad norm, lr."""

    def reset(self) -> None:
        super().reset()
        self.losses, self.grad_norms, self.lr = [], [], 0.0

    def add(self, step: dict) -> None:
        super().add(step["stats"])
        self.losses.append(step["loss"])
        self.grad_norms.append(step["grad_norm"])
        self.lr = step["lr"]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "losses": list(self.losses),
                "grad_norms": list(self.grad_norms), "lr": self.lr}

    def load_state_dict(self, state: dict | None) -> None:
        """Restore a checkpoint's window (None: a checkpoint written before windows were kept,
        whose first line after a resume then averages only the steps since the checkpoint)."""
        if state is None:
            return
        super().load_state_dict(state)
        self.losses, self.grad_norms = list(state["losses"]), list(state["grad_norms"])
        self.lr = state["lr"]

    def flush(self, step: int, variance_proxy: float) -> dict:
        record = {
            "step": step, "loss": sum(self.losses) / len(self.losses),
            "masked_ce": self.masked_ce(), "loss_per_t_bin": self.loss_per_t_bin(),
            "grad_norm": sum(self.grad_norms) / len(self.grad_norms),
            "lr": self.lr, "tokens_per_s": self.tokens_per_s(),
            "variance_proxy": None if math.isnan(variance_proxy) else variance_proxy,
        }
        self.reset()
        return record


def plain_line(record: dict, max_steps: int) -> str:
    """The progress line printed where no progress bar is shown (CI, logs)."""
    line = f"step {record['step']}/{max_steps} loss {record['loss']:.4f}"
    if "val_loss" in record:
        se = record["val_se"]
        line += f" val {record['val_loss']:.4f}±" + (f"{se:.4f}" if math.isfinite(se) else "n/a")
    return line + f" lr {record['lr']:.2e} tok/s {record['tokens_per_s']:.0f}"


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the log lines up to ``step`` (a resumed run rewrites what followed; a fresh run
    passes -1). A line torn by a kill during its write is dropped with the lines after it."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(errors="replace").splitlines():  # a torn line is dropped
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if record["step"] <= step:
            keep.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def scalars(record: dict, prefix: str = "") -> Iterator[tuple[str, float]]:
    """A ``metrics.jsonl`` record's numbers as TensorBoard ``(tag, value)`` pairs: ``step`` left
    out, nested keys and list indices joined by ``/`` (``loss_per_t_bin/3``,
    ``ppots_refit/kl``), None and strings skipped."""
    for key, value in record.items():
        if not prefix and key == "step":
            continue
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from scalars(value, tag + "/")
        elif isinstance(value, (list, tuple)):
            yield from scalars({str(j): v for j, v in enumerate(value)}, tag + "/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield tag, float(value)


class TensorBoardLog:
    """TensorBoard scalars of every record, at the record's step (torch's SummaryWriter; needs
    the ``tensorboard`` package: ``pip install 'maskdiff[tensorboard]'``). ``purge_step``
    hides the events a resumed run rewrites, as :func:`truncate_metrics` drops their lines."""

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ValueError("train.tensorboard needs the tensorboard package: "
                             "pip install 'maskdiff[tensorboard]' (tensorboard==2.21.0)") from err
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def write(self, record: dict) -> None:
        for tag, value in scalars(record):
            self.writer.add_scalar(tag, value, global_step=int(record["step"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class open_metrics:
    """Append records to ``metrics.jsonl`` on rank 0 (a no-op logger on other ranks), and to
    TensorBoard under ``tensorboard`` (a directory) when given; the events of steps after
    ``resume_step`` that an earlier session wrote are purged."""

    def __init__(self, path: Path, rank: int, tensorboard: Path | None = None,
                 resume_step: int = 0) -> None:
        self.path, self.rank, self.handle = path, rank, None
        self.tensorboard, self.resume_step, self.board = tensorboard, resume_step, None

    def __enter__(self):
        if self.rank == 0:
            self.handle = self.path.open("a")
            if self.tensorboard is not None:
                self.board = TensorBoardLog(self.tensorboard, purge_step=self.resume_step + 1)

        def log(record: dict) -> None:
            if self.handle is not None:
                with naming(self.path):
                    self.handle.write(jsonio.dumps(record) + "\n")
                    self.handle.flush()
            if self.board is not None:
                self.board.write(record)
        return log

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            with naming(self.path):
                self.handle.close()
        if self.board is not None:
            self.board.close()
