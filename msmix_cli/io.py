"""Writing files so that a crash, a full disk or Ctrl-C never leaves a half-written one in place."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from msmix_cli.errors import BadInput, MsmixError, RunFailed, first_line

# What the system says when the machine fails (its disk is full or failing), not the path it was given.
MACHINE_FAILURES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path`, else removed.

    A write the operating system refuses is one line naming `path` and the system's reason, whichever library
    did the writing: RunFailed for a full or failing disk, BadInput for a path that cannot be written (a file
    where a folder should be, no permission, a read-only file system).
    """
    target = Path(path)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as error:
        if tmp is not None:
            with contextlib.suppress(OSError):  # the reason to report is the write's, not the clean-up's
                tmp.unlink(missing_ok=True)
        refused = os_error(error) if isinstance(error, Exception) and not isinstance(error, MsmixError) else None
        if refused is None:  # not the system refusing a write (a bug, Ctrl-C, a message already made): as it is
            raise
        raise os_failure(f"could not write {target}", refused) from error


def os_error(error: BaseException) -> OSError | None:
    """The OSError behind `error`, if any: h5py and torch report a failed write as a RuntimeError raised while
    handling the OSError (h5py on closing the file, torch's zip writer on its next check)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def os_failure(message: str, error: OSError) -> MsmixError:
    """`message: <the system's reason>`, a RunFailed when the machine failed, else a BadInput."""
    kind = RunFailed if error.errno in MACHINE_FAILURES else BadInput
    return kind(f"{message}: {describe_os_error(error)}")


def describe_os_error(error: OSError) -> str:
    """The system's words for the errno, e.g. "No space left on device" (h5py's own strerror spans several lines)."""
    return os.strerror(error.errno) if error.errno else first_line(error)


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
    import torch  # here, not at the top: the CLI imports this module for its errors, and `--help` must stay fast

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        # Through a Python file, a failed write raises the system's OSError; given a path, torch's C++
        # writer reports it only as "unexpected pos ...".
        torch.save(obj, handle)
