"""The process pool experiments train their runs in (results do not depend on the number of
workers; they depend on each worker's thread count, which the reports record).

The workers die with the job: an exception in the parent (Ctrl-C, SIGTERM, an error) kills them
before the pool is left, and a parent that is killed outright (SIGKILL, an OOM kill) takes them
along, through ``PR_SET_PDEATHSIG`` on Linux and, everywhere, a thread in each worker that exits
it once its parent is gone. A worker killed mid-run leaves that run's last checkpoint; the job
rerun resumes it (the run lock dies with its holder). Workers ignore SIGINT: Ctrl-C reaches the
parent, which stops them, so an interrupted job prints one line, not one traceback per worker.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import torch

PARENT_POLL_SECONDS = 0.5


class Serial:
    """The in-process stand-in for a process pool (``workers=1``)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    @staticmethod
    def map(fn, items):
        return map(fn, items)


def _die_with(parent: int) -> None:
    """End this process when ``parent`` ends (whichever way it ends)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass  # the thread below still watches
    if os.getppid() != parent:  # the parent died before the watch was set
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="maskdiff-parent-watch", daemon=True).start()


def _init_worker(threads: int, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    _die_with(parent)
    torch.set_num_threads(threads)
    # A worker shows no progress bar: a thread lock spares tqdm its multiprocessing lock, a named
    # semaphore that a killed worker would leave to the resource tracker (a warning at exit).
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


def _executor_class():
    from concurrent.futures import ProcessPoolExecutor

    class WorkerPool(ProcessPoolExecutor):
        """A ``ProcessPoolExecutor`` whose workers are killed when the ``with`` block is left by
        an exception (the default waits for every queued task to finish)."""

        def __exit__(self, exc_type, exc, tb):
            if exc_type is None:
                return super().__exit__(exc_type, exc, tb)
            self.kill_workers()
            return False

        def kill_workers(self) -> None:
            processes = list((self._processes or {}).values())
            for process in processes:
                if process.is_alive():
                    process.kill()
            for process in processes:
                process.join(timeout=5)
            self.shutdown(wait=True, cancel_futures=True)

    return WorkerPool


def worker_pool(workers: int, threads: int | None = None):
    """``workers`` spawned processes of ``threads`` intra-op threads each (default 1), or the
    in-process :class:`Serial` for one worker; both used as ``with ... as pool: pool.map``.
    The workers never outlive the block nor this process."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if workers == 1:
        return Serial()
    import multiprocessing

    return _executor_class()(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads or 1, os.getpid()))
