"""The errors msmix reports to a user. The CLI maps each to a one-line message and an exit code."""


def first_line(error: BaseException) -> str:
    """The first line of a library's error text (h5py's and torch's span several), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class MsmixError(Exception):
    """A failure the user can act on; `exit_code` is what the CLI exits with."""

    exit_code = 1


class BadInput(MsmixError):
    """The user gave something msmix cannot use: unknown name, malformed file, wrong option (exit 2)."""

    exit_code = 2


class RunFailed(MsmixError):
    """A run started and could not finish: non-finite loss, host down, disk full (exit 1)."""

    exit_code = 1


class Interrupted(MsmixError):
    """Stopped by SIGINT/SIGTERM at a safe point; the run can be resumed (exit 130, as shells expect)."""

    exit_code = 130
