"""What a training run costs: peak memory, FLOPs, wall time."""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_freed_memory() -> None:
    """Give freed heap pages back to the OS so an RSS baseline is not inflated by earlier runs."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:  # not glibc
            pass


class PeakMemory:
    """Peak memory of a block.

    CUDA: ``torch.cuda.max_memory_allocated`` (PyTorch's allocator only), absolute, so it
    includes the weights. CPU: the largest increase of the process's resident set over its
    value at the start of the block, sampled every ``interval`` seconds (Linux); an estimate,
    since the allocator may reuse pages freed before the block.
    """

    def __init__(self, device: torch.device | str, interval: float = 0.005):
        self.device = torch.device(device)
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()

    def _sample(self, baseline: int) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, _rss_bytes() - baseline)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.path.exists("/proc/self/statm"):
            _release_freed_memory()
            self._thread = threading.Thread(target=self._sample, args=(_rss_bytes(),), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn()`` by ``torch.utils.flop_counter.FlopCounterMode``.

    Counts matmul, convolution and attention kernels only (2·m·n·k per matmul, backward
    included when run inside); elementwise ops, norms, softmax and optimizer arithmetic are
    not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


@contextmanager
def timed() -> Iterator[list[float]]:
    box: list[float] = []
    start = time.perf_counter()
    yield box
    box.append(time.perf_counter() - start)


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
