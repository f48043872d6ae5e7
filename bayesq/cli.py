"""The command-line face of the experiment scripts: bad input is a one-line message, not a traceback.

A script's ``main`` raises ``ValueError`` / ``TypeError`` (bad arguments or files; bayesq's own
errors, such as :class:`bayesq.checkpoint.CheckpointError`, are ``ValueError`` subclasses) or
``OSError`` (a missing or unreadable file). :func:`run_main` prints that message to stderr and exits
with status 2, the status ``argparse`` uses for bad arguments; any other exception is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

__all__ = ["finite_float", "int_at_least", "positive_float", "run_main"]


def run_main(main: Callable[[], object]) -> None:
    """Call `main()`; on a user-facing error print ``<prog>: error: <message>`` and exit 2."""
    try:
        main()
    except (ValueError, TypeError, OSError) as err:
        prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv else "bayesq"
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


# argparse `type=` converters: a bad value is reported by argparse as "argument --x: expected ...".
def int_at_least(minimum: int) -> Callable[[str], int]:
    """A converter to an int >= `minimum` (``type=int_at_least(1)`` for counts, 0 for seeds)."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return convert


def finite_float(text: str) -> float:
    """A converter to a finite float (NaN and infinities refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A converter to a finite float > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value
