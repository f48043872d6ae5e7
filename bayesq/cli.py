"""The command-line face of the experiment scripts: bad input is a one-line message, not a traceback.

A script's ``main`` raises ``ValueError`` / ``TypeError`` (bad arguments or files; bayesq's own
errors, such as :class:`bayesq.checkpoint.CheckpointError`, are ``ValueError`` subclasses) or
``OSError`` (a missing or unreadable file). :func:`run_main` prints that message to stderr and exits
with status 2, the status ``argparse`` uses for bad arguments; any other exception is a bug and keeps
its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["run_main"]


def run_main(main: Callable[[], object]) -> None:
    """Call `main()`; on a user-facing error print ``<prog>: error: <message>`` and exit 2."""
    try:
        main()
    except (ValueError, TypeError, OSError) as err:
        prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv else "bayesq"
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
