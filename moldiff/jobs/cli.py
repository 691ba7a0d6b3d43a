"""What the scripts share: a user's mistake ends the run with one line, not a traceback."""

from __future__ import annotations

import sys
from contextlib import contextmanager


@contextmanager
def user_errors():
    """A ValueError or FileNotFoundError from a job (a bad value, a missing or unusable input)
    becomes ``error: <message>`` on stderr and exit status 2; any other exception, a bug, keeps
    its traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
