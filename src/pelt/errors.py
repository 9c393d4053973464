"""The one exception type pelt raises for bad input.

The CLI turns it into a single line on stderr and exit code 2, so its message must say what is wrong
and how to fix it, without relying on a traceback.
"""

EXIT_BAD_INPUT = 2  # the CLI's exit code for a PeltError
EXIT_RUNS_FAILED = 3  # `pelt sweep` when runs of its grid failed, each recorded (1 stays Python's for a crash)
EXIT_INTERRUPTED = 130  # and for Ctrl-C (128 + SIGINT, as shells report it); the sweep reads it as "stopped"


class PeltError(Exception):
    """A user-facing error: bad input, an impossible configuration, a mismatched adapter."""


class PeltWarning(UserWarning):
    """Something that works but is probably not what the user meant; the CLI prints it as one line."""


def hub_failure(task: str, source: str, exc: Exception, local: str) -> PeltError:
    """Any hub, network or cache failure means the same to a user: say so in one line, and what to use instead."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return PeltError(
        f"could not load {task} from the hub ({source}): {type(exc).__name__}: {reason[:300]}; "
        f"pass --data-dir pointing at {local} instead"
    )
