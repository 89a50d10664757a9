"""A results folder that always holds one whole run, old or new, never a mix.

A run works in a sibling folder ``<out>.partial`` (locked against a second run, stamped with the
run's configuration) and is swapped into ``<out>`` only when it has finished, in one atomic
exchange where the platform has one (Linux ``renameat2``). So:

- an interrupted run leaves ``<out>`` as it was, and its finished downstream runs in
  ``<out>.partial``, which the same command resumes; another configuration is refused there;
- ``--overwrite`` replaces a finished run only at the very end;
- two runs into the same folder at once: the second is refused;
- an error before anything worth keeping was written leaves no folder behind.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Mapping

from ..errors import SalienceBenchError
from .io import MANIFEST, write_json

PARTIAL_SUFFIX = ".partial"
RUN_CONFIG = "run_config.json"
LOCK = ".lock"
SUBFOLDERS = ("figures",)


def _normalised(config: Mapping[str, Any]) -> dict:
    return json.loads(json.dumps(config, default=str))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} → {new!r}"]


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 with RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(a))


class OutputFolder:
    """``path``: where the finished run will be; ``work``: where it is written meanwhile."""

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False, config: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.work = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self.overwrite = overwrite
        self.config = _normalised(config or {})
        self.resuming = False
        self._lock_fd: int | None = None
        self._created: list[Path] = []  # parent folders this run made, removed again if it leaves nothing

    # --- start --------------------------------------------------------------------------------
    def open(self) -> "OutputFolder":
        """Every check of the folder, before any expensive work; takes the lock."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise SalienceBenchError(f"output folder {str(path)!r} is a file; choose another --out")
        if path.is_dir():
            if (path / MANIFEST).exists():
                if not self.overwrite:
                    raise SalienceBenchError(
                        f"output folder {str(path)!r} already holds a finished run; pass --overwrite or choose another --out")
            elif any(path.iterdir()):
                raise SalienceBenchError(
                    f"output folder {str(path)!r} exists and holds no finished salience_bench run (no {MANIFEST}); "
                    "it is never replaced: choose another --out")
        fresh = False
        try:
            self._created = [p for p in reversed(path.parents) if not p.exists()]
            path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.work.exists()
            self.work.mkdir(exist_ok=True)
            self._lock()
            if not fresh:
                self._adopt_partial()
            for sub in SUBFOLDERS:
                if (self.work / sub).exists() and not (self.work / sub).is_dir():
                    raise SalienceBenchError(f"{str(self.work / sub)!r} is a file where the run writes a folder; remove it")
            self._stamp_pid()
            if not (self.work / RUN_CONFIG).exists():
                write_json(self.config, self.work / RUN_CONFIG)
            with tempfile.NamedTemporaryFile(dir=self.work, prefix=".write-test-"):
                pass
        except (OSError, SalienceBenchError) as err:
            if self._lock_fd is not None and fresh:
                self.abandon()
            self.release()
            if isinstance(err, SalienceBenchError):
                raise
            raise SalienceBenchError(f"output folder {str(path)!r} is not writable: {err.strerror or err}") from err
        return self

    def _lock(self) -> None:
        fd = os.open(self.work / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SalienceBenchError(
                f"another run (pid {holder}) is writing to {str(self.path)!r}; wait for it or choose another --out"
            ) from None
        self._lock_fd = fd

    def _stamp_pid(self) -> None:
        """Name this process in the lock file (after every check passed: a refused run writes nothing)."""
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, str(os.getpid()).encode(), 0)

    def _adopt_partial(self) -> None:
        """An unfinished run is in ``work``: resume it if it is this configuration, else refuse (or discard)."""
        stamp = self.work / RUN_CONFIG
        if self.overwrite:
            self._clear_work()
            return
        if not stamp.exists():
            if self._holds_results():
                raise SalienceBenchError(f"{str(self.work)!r} holds files of an unknown run; remove it or pass --overwrite")
            return
        old = json.loads(stamp.read_text())
        changed = _differences(old, self.config)
        if changed:
            raise SalienceBenchError(
                f"{str(self.work)!r} holds an unfinished run with another configuration ({'; '.join(changed[:4])}); "
                "rerun with the same options to resume it, or pass --overwrite to discard it")
        self.resuming = self._holds_results()

    def _holds_results(self) -> bool:
        return any(p.name not in (RUN_CONFIG, LOCK) and not p.name.startswith(".write-test-") for p in self.work.iterdir())

    def _clear_work(self) -> None:
        for entry in self.work.iterdir():
            if entry.name == LOCK:
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()

    # --- end ----------------------------------------------------------------------------------
    def finish(self) -> Path:
        """Swap the finished run into ``path`` (atomically where possible) and drop what it replaces."""
        (self.work / RUN_CONFIG).unlink(missing_ok=True)
        (self.work / LOCK).unlink(missing_ok=True)  # the open descriptor keeps the lock until release
        if self.path.exists():
            if _exchange(self.work, self.path):
                shutil.rmtree(self.work)
            else:
                replaced = self.path.with_name(f".{self.path.name}.replaced-{uuid.uuid4().hex[:8]}")
                os.replace(self.path, replaced)
                os.replace(self.work, self.path)
                shutil.rmtree(replaced)
        else:
            os.replace(self.work, self.path)
        self.release()
        return self.path

    def abandon(self) -> None:
        """After an error: keep ``work`` if it holds finished results (to resume), else remove it."""
        try:
            if self.work.is_dir() and not self._holds_results() and self._lock_fd is not None:
                shutil.rmtree(self.work)
                for parent in reversed(self._created):
                    if parent.is_dir() and not any(parent.iterdir()):
                        parent.rmdir()
        finally:
            self.release()

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
