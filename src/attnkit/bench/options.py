"""The command-line grammar every ``attnkit`` command and benchmark suite shares.

- :class:`Parser`: argparse, but a mistake is one line on stderr and exit code 2
  (never a usage dump or a traceback).
- Lists are written one way everywhere: comma-separated, no spaces
  (``--n 1024,4096``, ``--mechanisms softmax,linear``); :func:`ints`,
  :func:`floats` and :func:`names` parse them.
- :func:`add_common_arguments`: the options every suite takes (``--db``,
  ``--resume``, ``--threads``, ``--no-progress``, ``--device``).
"""
from __future__ import annotations

import argparse
import sys


class UsageError(ValueError):
    """A mistake on the command line or in its values: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line: ``prog: error: message``."""

    def error(self, message: str):  # argparse calls this for every parse error
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _split(text: str, what: str) -> list[str]:
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, got {text!r}")
    return parts


def _number(text: str, cast, accept, expected: str):
    """``cast(text)`` when it parses and ``accept`` holds, else an ArgumentTypeError saying what was ``expected``."""
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not accept(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _number(text, float, lambda v: v > 0 and v != float("inf"), "a positive number")


def ints(text: str) -> list[int]:
    """``"1024,4096"`` -> ``[1024, 4096]``: positive integers."""
    return [positive_int(p) for p in _split(text, "positive integers")]


def floats(text: str) -> list[float]:
    """``"1e-3,3e-3"`` -> ``[0.001, 0.003]``: positive numbers."""
    return [positive_float(p) for p in _split(text, "positive numbers")]


def names(text: str) -> list[str]:
    """``"softmax,linear"`` -> ``["softmax", "linear"]``."""
    return _split(text, "names")


def choices(allowed, what: str = "name") -> callable:
    """A comma list whose items must come from ``allowed`` (unknown ones name the closest allowed one)."""
    allowed = list(allowed)

    def parse(text: str) -> list[str]:
        items = names(text)
        for item in items:
            if item not in allowed:
                raise argparse.ArgumentTypeError(unknown(item, allowed, what))
        return items

    parse.__name__ = "list"
    return parse


def unknown(name: str, allowed, what: str = "name") -> str:
    """``unknown name 'softmx'; did you mean 'softmax'? (expected one of ...)``, in one line."""
    import difflib

    allowed = sorted(allowed)
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listed = ", ".join(allowed) if len(allowed) <= 30 else ", ".join(allowed[:30]) + ", ..."
    return f"unknown {what} {name!r}{hint} (expected one of: {listed})"


def device(text: str) -> str:
    """A torch device that exists on this machine (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected a torch device such as cpu or cuda, got {text!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"device {text!r}: this torch build sees no CUDA device")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"device {text!r}: only {torch.cuda.device_count()} CUDA devices")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"device {text!r}: MPS is not available")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"device {text!r}: expected cpu, cuda[:N] or mps")
    return str(dev)


def add_common_arguments(parser: argparse.ArgumentParser, threads: int | None = None) -> None:
    """The options of every suite; ``threads`` is the suite's default thread count (None: torch's)."""
    group = parser.add_argument_group("options of every suite")
    group.add_argument("--db", default=None,
                       help="results database (default: $ATTNKIT_DB or ~/.local/share/attnkit/results.sqlite)")
    group.add_argument("--resume", action="store_true",
                       help="continue the latest unfinished run with the same configuration")
    group.add_argument("--threads", type=positive_int, default=threads,
                       help=f"torch threads (default: {threads or 'torch’s choice'})")
    group.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    group.add_argument("--device", type=device, default="cpu", help="torch device to run on (default: cpu)")
