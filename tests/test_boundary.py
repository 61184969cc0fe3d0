"""The error boundary: OS-level failures become one line and an exit code, never a traceback."""

from __future__ import annotations

import errno

import pytest
import typer
from typer.testing import CliRunner

from mrsynth_cli.cli.boundary import boundary


def _app(exc: BaseException) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @boundary
    def run() -> None:
        raise exc

    return app


@pytest.mark.parametrize(
    ("exc", "code", "text"),
    [
        (PermissionError(errno.EACCES, "Permission denied", "/data/out/F.nii.gz"), 2, "permission denied: /data/out/F.nii.gz"),
        (OSError(errno.ENOSPC, "No space left on device", "/scratch/x.nii.gz"), 1, "No space left on device"),
        (OSError(errno.EROFS, "Read-only file system", "/ro/x"), 1, "Read-only file system"),
        (OSError(errno.EIO, "Input/output error"), 1, "internal error (OSError"),
        (ValueError("boom"), 1, "internal error (ValueError: boom)"),
    ],
)
def test_os_errors_are_one_line(exc: BaseException, code: int, text: str) -> None:
    result = CliRunner().invoke(_app(exc), [], env={"MRSYNTH_DEBUG": "0"})
    assert result.exit_code == code
    assert text in result.output and " -> " in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1



def test_closed_pipe_stops_quietly() -> None:
    """A reader that closes the pipe (`mrsynth weights list | head -1`) ends the command with 141, silently."""
    import subprocess
    import sys

    code = (
        "import typer\n"
        "from mrsynth_cli.cli.boundary import boundary\n"
        "@boundary\n"
        "def cmd():\n"
        "    raise BrokenPipeError(32, 'Broken pipe')\n"
        "try:\n"
        "    cmd()\n"
        "except typer.Exit as e:\n"
        "    raise SystemExit(e.exit_code)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 141 and result.stderr == ""
