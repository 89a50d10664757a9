"""Where work runs: device names, batches moved to a device, and a quiet transformers.

Every entry point (the CLI, the studies, the benchmarks, training) goes through these, so a
device string means the same thing everywhere and its error names the valid choices.
"""

from __future__ import annotations

import re
import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch

from .errors import SalienceBenchError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_name(text: str) -> str:
    """``text`` if it names a device (auto, cpu, cuda, cuda:N, mps), else a one-line error; nothing is opened."""
    if not isinstance(text, str) or not _DEVICE.match(text):
        raise SalienceBenchError(f"unknown device {text!r}; valid: {DEVICE_CHOICES}")
    return text


def resolve_device(text: str | torch.device = "auto") -> torch.device:
    """``auto`` → this process's GPU (its own under torchrun) or the CPU; otherwise the named device,
    checked to exist here."""
    if isinstance(text, torch.device):
        return text
    check_device_name(text)
    if text == "auto":
        from . import distributed

        if distributed.active():
            return distributed.local_device()
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SalienceBenchError(f"device {text!r} requested but CUDA is not available; valid here: auto, cpu")
        index = int(text.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise SalienceBenchError(
                f"device {text!r} requested but this machine has {torch.cuda.device_count()} GPU(s); "
                f"valid: cuda:0 … cuda:{torch.cuda.device_count() - 1}"
            )
    if text == "mps" and not torch.backends.mps.is_available():
        raise SalienceBenchError("device 'mps' requested but MPS is not available; valid here: auto, cpu")
    return torch.device(text)


def to_device(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """A batch dict with every tensor moved to ``device`` (other values passed through)."""
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def quiet_transformers() -> None:
    """No transformers warnings or download bars: our own progress bars and errors say what matters."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


class Terminated(BaseException):
    """SIGTERM, raised as an exception so that ``finally`` blocks clean up unfinished files on the way out."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextmanager
def raise_on_sigterm() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Terminated` in the main thread (a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def available_memory(device: torch.device) -> int:
    """Free bytes on ``device``: the CUDA allocator's free memory, or the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 8 << 30
