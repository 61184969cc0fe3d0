"""Root Typer app. Commands live one per module and import heavy libraries only when they run.

No data leaves the machine: mrsynth has no telemetry and uses the network only for an explicit
weights download.
"""

from __future__ import annotations

from typing import Annotated

import typer

from mrsynth_cli import __version__
from mrsynth_cli.cli import batch as batch_cmd
from mrsynth_cli.cli import evaluate as evaluate_cmd
from mrsynth_cli.cli import info as info_cmd
from mrsynth_cli.cli import inspect as inspect_cmd
from mrsynth_cli.cli import phantom as phantom_cmd
from mrsynth_cli.cli import preprocess as preprocess_cmd
from mrsynth_cli.cli import report as report_cmd
from mrsynth_cli.cli import synthesize as synthesize_cmd
from mrsynth_cli.cli import train as train_cmd
from mrsynth_cli.cli import weights as weights_cmd
from mrsynth_cli.cli.boundary import boundary, configure_logging

__all__ = ["app", "main"]

app = typer.Typer(
    name="mrsynth",
    help=(
        "Synthesize a missing MRI contrast (T1, T1ce, T2, PD, FLAIR, TOF-MRA) from the contrasts a "
        "brain scan has, with published diffusion models. Outputs are labelled synthetic. "
        "No telemetry: nothing leaves this machine except an explicit weights download."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",  # docstring paragraphs reflow to the terminal width
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mrsynth {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv for debug).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only print errors.")] = False,
) -> None:
    """Set up logging for every command. Set MRSYNTH_DEBUG=1 to see full tracebacks."""
    configure_logging(verbose, quiet)


app.command("synthesize")(boundary(synthesize_cmd.synthesize))
app.command("batch")(boundary(batch_cmd.batch))
app.command("preprocess")(boundary(preprocess_cmd.preprocess_cmd))
app.add_typer(train_cmd.app, name="train")
app.add_typer(weights_cmd.app, name="weights")
app.command("info")(boundary(info_cmd.info))
app.command("inspect")(boundary(inspect_cmd.inspect_inputs))
app.command("evaluate")(boundary(evaluate_cmd.evaluate))
app.command("phantom")(boundary(phantom_cmd.phantom))
app.command("report")(boundary(report_cmd.report))


#: Options that take several values after one flag (``--in t1.nii.gz t2.nii.gz``).
MULTI_VALUE_OPTIONS = frozenset({"--in", "--target", "--data", "--inputs", "--validation-subject",
                                "--participant-label", "--transform", "--contrasts",
                                "--tr", "--te", "--ti"})


def expand_multi_value_options(argv: list[str]) -> list[str]:
    """Rewrite ``--in a b c`` as ``--in a --in b --in c`` (Typer options take one value per flag).

    Values continue until the next token that starts with ``-`` (``--`` ends option parsing).
    """
    out: list[str] = []
    current: str | None = None
    for index, token in enumerate(argv):
        if token == "--":
            out.extend(argv[index:])
            return out
        if token.startswith("-"):
            current = token if token in MULTI_VALUE_OPTIONS else None
            out.append(token)
            continue
        if current is not None and out and out[-1] != current:
            out.append(current)
        out.append(token)
    return out


def _terminate(signum, frame) -> None:
    """SIGTERM (SLURM time limit, ``kill``) unwinds like Ctrl-C: temporary files are removed."""
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, _terminate)

    app(args=expand_multi_value_options(sys.argv[1:]), prog_name="mrsynth")


if __name__ == "__main__":
    main()
