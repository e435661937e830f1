"""Writing files so that a crash, a full disk or Ctrl-C never leaves a half-written one in place."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from msmix_cli.errors import RunFailed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path`, else removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise RunFailed(f"could not write {target}: {error.strerror or error}") from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems (and Windows) cannot fsync a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> None:
    """Let `write(tmp_path)` produce the file, then move it into place atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
