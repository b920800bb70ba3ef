"""The process pool experiments train their runs in (results do not depend on the number of
workers; they depend on each worker's thread count, which the reports record)."""

from __future__ import annotations

import torch


class Serial:
    """The in-process stand-in for a process pool (``workers=1``)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    @staticmethod
    def map(fn, items):
        return map(fn, items)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def worker_pool(workers: int, threads: int | None = None):
    """``workers`` spawned processes of ``threads`` intra-op threads each (default 1), or the
    in-process :class:`Serial` for one worker; both used as ``with ... as pool: pool.map``."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if workers == 1:
        return Serial()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads or 1,))
