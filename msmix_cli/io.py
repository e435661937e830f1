"""Writing files so that a crash, a full disk or Ctrl-C never leaves a half-written one in place."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from msmix_cli.errors import BadInput, MsmixError, RunFailed, first_line

# `.NAME.PID.XXXXXXXX.tmp`: a temporary file names the process writing it, so a later writer can tell a dead one's.
TEMPORARY = re.compile(r"\.(?P<target>.+)\.(?P<pid>\d+)\.[^.]+\.tmp")
ANY_TEMPORARY = re.compile(r"\..+\.tmp")

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
        remove_stale_temporaries(target.parent, of=target.name)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 is for the write; the file gets what any new file gets
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


def remove_stale_temporaries(folder: Path, *, of: str | None = None, every: bool = False) -> None:
    """Remove the temporary files in `folder` (only those of target `of`, if given) whose writer has died: a
    kill -9 during a write leaves one behind. `every`: all of them, untagged ones too (the caller holds the
    folder's lock, so no writer is alive)."""
    with contextlib.suppress(OSError):  # a folder that cannot be listed has nothing this could clean
        for entry in os.scandir(folder):
            tagged = TEMPORARY.fullmatch(entry.name)
            stale = (bool(ANY_TEMPORARY.fullmatch(entry.name)) if every
                     else tagged is not None and (of is None or tagged["target"] == of) and not _alive(int(tagged["pid"])))
            if stale and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
