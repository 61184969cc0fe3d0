"""The one error boundary: domain errors become one line on stderr and an exit code.

``MRSYNTH_DEBUG=1`` re-raises instead, so developers get the full traceback. Tracebacks never show
local variables (they could hold patient data): the app sets ``pretty_exceptions_show_locals=False``.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from mrsynth_cli.errors import EXIT_RUNTIME, MrsynthError

__all__ = ["boundary", "debug_enabled", "fail"]

F = TypeVar("F", bound=Callable[..., Any])
#: OS errors that describe the machine, not a bug: disk full, quota exceeded, read-only file system.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
#: Conventional exit status after SIGINT (128 + 2).
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as shell tools


def debug_enabled() -> bool:
    """Whether ``MRSYNTH_DEBUG`` asks for full tracebacks."""
    return os.environ.get("MRSYNTH_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


def fail(message: str, code: int) -> typer.Exit:
    """Print ``mrsynth: error: <message>`` on stderr and return the Exit to raise."""
    typer.echo(f"mrsynth: error: {message}", err=True)
    return typer.Exit(code)


def _internal_error(exc: BaseException) -> typer.Exit:
    logging.getLogger("mrsynth").debug("unexpected error", exc_info=exc)
    first = (str(exc).splitlines() or [""])[0][:200]
    return fail(
        f"internal error ({type(exc).__name__}: {first}) -> rerun with MRSYNTH_DEBUG=1 for the traceback and report it",
        EXIT_RUNTIME,
    )


def boundary(func: F) -> F:
    """Wrap a command so that errors end it with one line and the right exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except MrsynthError as exc:
            if debug_enabled():
                raise
            raise fail(exc.one_line(), exc.exit_code) from None
        except KeyboardInterrupt:
            if debug_enabled():
                raise
            raise fail("interrupted; no partial output was left", EXIT_INTERRUPTED) from None
        except BrokenPipeError:  # the reader went away (`mrsynth weights list | head`): stop quietly, as cat does
            if debug_enabled():
                raise
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except PermissionError as exc:  # unreadable input, unwritable output folder, read-only cache...
            if debug_enabled():
                raise
            where = exc.filename or "a file"
            raise fail(f"permission denied: {where} -> check its permissions (or choose another path)", 2) from None
        except OSError as exc:
            if debug_enabled():
                raise
            if exc.errno not in _ENVIRONMENT_ERRNOS:
                raise _internal_error(exc) from None
            where = f" ({exc.filename})" if exc.filename else ""
            raise fail(f"{exc.strerror}{where} -> free space or choose another folder", EXIT_RUNTIME) from None
        except MemoryError:
            if debug_enabled():
                raise
            raise fail("out of memory -> use a smaller configuration or a machine with more RAM",
                       EXIT_RUNTIME) from None
        except Exception as exc:  # a bug: say so in one line, keep the traceback for MRSYNTH_DEBUG=1
            if debug_enabled():
                raise
            raise _internal_error(exc) from None

    return wrapper  # type: ignore[return-value]


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Log to stderr as ``mrsynth: warning: ...``; ``-v`` shows info, ``-vv`` debug."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mrsynth: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("nibabel", "matplotlib", "PIL", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
