"""The errors msmix reports to a user. The CLI maps each to a one-line message and an exit code."""


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
