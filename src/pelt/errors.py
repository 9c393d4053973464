"""The one exception type pelt raises for bad input.

The CLI turns it into a single line on stderr and exit code 2, so its message must say what is wrong
and how to fix it, without relying on a traceback.
"""


class PeltError(Exception):
    """A user-facing error: bad input, an impossible configuration, a mismatched adapter."""
