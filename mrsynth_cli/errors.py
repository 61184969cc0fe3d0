"""Domain errors: each carries a one-line message that names the file and a hint with the fix.

The CLI's single error boundary (:func:`mrsynth_cli.cli.app.main`) turns these into a one-line
message on stderr and an exit code; nothing else in the package prints errors.
"""

from __future__ import annotations

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_RUNTIME",
    "MrsynthError",
    "InputError",
    "GeometryError",
    "ContrastError",
    "OutputExistsError",
    "RuntimeFailure",
]

#: Exit code for bad input or usage (matches Click/Typer usage errors).
EXIT_BAD_INPUT = 2
#: Exit code for a failure while running on valid input.
EXIT_RUNTIME = 1


class MrsynthError(Exception):
    """Base class for errors the CLI reports as one line, without a traceback.

    Args:
        message: what went wrong, naming the file concerned.
        hint: how to fix it, one short sentence.
    """

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message and the hint joined on one line (newlines flattened)."""
        text = self.message if not self.hint else f"{self.message} -> {self.hint}"
        return " ".join(text.split())


class InputError(MrsynthError):
    """An input file is missing, unreadable, not NIfTI, not 3D, non-finite, empty or implausible."""


class GeometryError(InputError):
    """Volumes that must share a grid do not, or a header's geometry is unusable."""


class ContrastError(InputError):
    """A contrast name is unknown, ambiguous or missing."""


class OutputExistsError(MrsynthError):
    """The output file exists and ``--force`` was not given."""


class RuntimeFailure(MrsynthError):
    """A step failed on valid input (out of memory, an external tool failed, ...)."""

    exit_code = EXIT_RUNTIME
