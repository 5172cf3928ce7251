"""What every command shares (DESIGN.md section 14): its parser, its value checks and its entry point."""

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from rpnr.common.errors import RPNRError, UsageError
from rpnr.common.files import error_line


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit status 1."""

    named = True  # the line begins "<prog>: error:" (False: "error:")

    def error(self, message: str):
        self.exit(1, f"{self.prog + ': ' if self.named else ''}error: {message} (see {self.prog} --help)\n")


# the value checks of every command (train.py's settings name theirs): rule -> (test, what a failing value is told)
CHECKS = {"int>=1": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "must be a positive integer"),
          ">0": (lambda v: v > 0, "must be positive"), ">=0": (lambda v: v >= 0, "must not be negative"),
          "[0,1)": (lambda v: 0 <= v < 1, "must be in [0, 1)")}


def check_values(*values: tuple[str, object, str]) -> None:
    """Refuse the first ``(name, value, rule)`` whose value fails its rule of :data:`CHECKS` (one line)."""
    for name, value, rule in values:
        test, told = CHECKS[rule]
        if not test(value):
            raise UsageError(f"{name} {told}, got {value!r}")


def require_positive(*values: tuple[str, object]) -> None:
    """Refuse the first ``(name, value)`` whose value is not a positive integer."""
    check_values(*((name, value, "int>=1") for name, value in values))


class _ClosedPipeSafe:
    """Standard output that goes to /dev/null once the reader goes away (``report.py ... | head -3``)."""

    def __init__(self, stream):
        self.stream = stream

    def _quiet(self) -> None:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        except (OSError, ValueError, AttributeError):
            self.stream = open(os.devnull, "w")  # noqa: SIM115 - a stream without a file descriptor

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            self._quiet()
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._quiet()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def run_command(work: Callable[[], int | None], prog: str | None = None,
                stop_line: Callable[[BaseException], str | None] | None = None) -> int:
    """Run ``work`` as a command: its status (0 for None), or one line and 1 (expected error) or 130 (interrupt)."""
    prefix, loud = f"{prog}: " if prog else "", os.environ.get("RANK", "0") == "0"
    saved = sys.stdout
    sys.stdout = _ClosedPipeSafe(saved)
    try:
        return work() or 0
    except (RPNRError, OSError, KeyboardInterrupt) as exc:
        line = stop_line(exc) if stop_line is not None else None
        if line is None:
            line = "interrupted; nothing was written" if isinstance(exc, KeyboardInterrupt) else \
                f"error: {error_line(exc)}"
        if loud:
            print(prefix + line, file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 1
    finally:
        sys.stdout.flush()
        sys.stdout = saved


def script(main: Callable[[], int]) -> None:
    """Run a command's ``main`` as the program: SIGTERM (``kill``, torchrun) ends it as Ctrl-C does."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())


def _interrupted_at_start(kind, value, traceback) -> None:
    """A Ctrl-C while a command starts (its imports take seconds, before :func:`run_command` runs) is one line."""
    if issubclass(kind, KeyboardInterrupt):
        print(f"{Path(sys.argv[0]).name}: interrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
    sys.__excepthook__(kind, value, traceback)


if sys.excepthook is sys.__excepthook__ and sys.argv and sys.argv[0] and \
        Path(__file__).resolve().parents[2] in Path(sys.argv[0]).resolve().parents:  # this project's own commands
    sys.excepthook = _interrupted_at_start
