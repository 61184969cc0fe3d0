"""``mrsynth batch``: synthesize for every subject of a BIDS dataset or a folder of subject folders.

Built for long unattended runs on workstations and SLURM arrays:

* models are loaded (and their sha256 verified) once per run, not once per subject;
* every subject is isolated: its failure is recorded and the run goes on (unless ``fail_fast``);
* outputs are BIDS derivatives, each written atomically by the synthesis pipeline;
* a subject is *claimed* (an exclusive claim file) while it is processed, so two runs on one output
  folder (two array tasks with overlapping parts, a rerun while the first is still going) never
  work on, or half-overwrite, the same subject; claims of dead processes on this host are taken over;
* ``part=(i, n)`` processes every n-th subject starting at the i-th (1-based), so ``n`` array tasks
  cover a dataset between them; it defaults from ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``;
* a JSON run report (versions, device, per-subject status, timings, one-line errors) and one log
  file per subject are written under ``logs/``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mrsynth_cli import __version__
from mrsynth_cli.errors import InputError, MrsynthError
from mrsynth_cli.io.atomic import write_json_atomic
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.io.subjects import Subject, discover_subjects

__all__ = ["BatchOptions", "BatchReport", "run_batch", "parse_part", "derivatives_root", "bids_output_name"]

log = logging.getLogger(__name__)

CLAIM_FILE = ".mrsynth-claim"


@dataclass(frozen=True)
class BatchOptions:
    """What ``mrsynth batch`` was asked to do (synthesis options are passed through unchanged)."""

    input_dir: Path
    output_dir: Path
    targets: list[Contrast]
    participant_labels: list[str] = field(default_factory=list)
    skip_existing: bool = False
    force: bool = False
    fail_fast: bool = False
    part: tuple[int, int] = (1, 1)
    model: str | None = None
    sampler: str = "auto"
    steps: int | None = None
    samples: int = 1
    seed: int = 0
    device: str = "auto"
    registration: str = "auto"
    segmentation: str = "auto"
    weights_dir: Path | None = None
    qc: bool = False


@dataclass
class SubjectResult:
    subject: str
    session: str | None
    status: str  # ok, skipped, failed, claimed, not-run, interrupted
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    error: str | None = None
    qc: list[str] = field(default_factory=list)


@dataclass
class BatchReport:
    results: list[SubjectResult]
    report_path: Path
    derivatives: Path

    @property
    def failed(self) -> list[SubjectResult]:
        return [r for r in self.results if r.status in ("failed", "interrupted")]

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        return ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no subjects"


# --------------------------------------------------------------------------------------------------
# Naming and selection


def parse_part(spec: str | None, environ: dict[str, str] | None = None) -> tuple[int, int]:
    """``--part i/n`` (1-based), else the SLURM array task (ID relative to its minimum), else ``(1, 1)``."""
    environ = os.environ if environ is None else environ
    if spec is None:
        task, count = environ.get("SLURM_ARRAY_TASK_ID"), environ.get("SLURM_ARRAY_TASK_COUNT")
        if task is None or count is None:
            return (1, 1)
        first = int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))
        return (int(task) - first + 1, int(count))
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not match:
        raise InputError(f"--part '{spec}' is not i/n", "e.g. --part 2/8 runs the second of eight parts")
    index, total = int(match.group(1)), int(match.group(2))
    if total < 1 or not 1 <= index <= total:
        raise InputError(f"--part {index}/{total} is out of range", f"i must be between 1 and n ({total})")
    return (index, total)


def bids_labels(subject: Subject) -> tuple[str, str | None]:
    """BIDS ``sub``/``ses`` labels; folder names that are not BIDS become alphanumeric labels."""
    match = re.fullmatch(r"sub-([A-Za-z0-9]+)(?:_ses-([A-Za-z0-9]+))?", subject.subject_id)
    if match:
        return match.group(1), match.group(2)
    label = re.sub(r"[^A-Za-z0-9]", "", subject.subject_id)
    if not label:
        raise InputError(f"subject folder '{subject.subject_id}' has no letters or digits", "rename the folder")
    return label, None


def bids_output_name(sub: str, ses: str | None, target: Contrast) -> Path:
    """``sub-X/[ses-Y/]anat/sub-X[_ses-Y][_ce-...]_desc-synth_<SUFFIX>.nii.gz`` (BIDS entity order)."""
    entities = [f"sub-{sub}"] + ([f"ses-{ses}"] if ses else [])
    entities += [f"{k}-{v}" for k, v in target.bids_entities.items()]
    entities.append("desc-synth")
    folder = Path(f"sub-{sub}") / (f"ses-{ses}" if ses else "") / "anat"
    return folder / f"{'_'.join(entities)}_{target.bids_suffix}.nii.gz"


def derivatives_root(output_dir: Path) -> Path:
    """``OUTPUT_DIR/derivatives/mrsynth``, unless OUTPUT_DIR already is such a folder."""
    output_dir = Path(output_dir)
    if output_dir.name == "mrsynth" and output_dir.parent.name == "derivatives":
        return output_dir
    return output_dir / "derivatives" / "mrsynth"


def _select(subjects: list[Subject], options: BatchOptions) -> list[Subject]:
    if options.participant_labels:
        wanted = {label.removeprefix("sub-") for label in options.participant_labels}
        known = {bids_labels(s)[0] for s in subjects}
        missing = sorted(wanted - known)
        if missing:
            raise InputError(
                f"--participant-label {', '.join(missing)} not found in {options.input_dir}",
                f"choose among {', '.join(sorted(known)[:20])}",
            )
        subjects = [s for s in subjects if bids_labels(s)[0] in wanted]
    index, total = options.part
    return subjects[index - 1 :: total]


def _dataset_description(root: Path, source: Path) -> None:
    path = root / "dataset_description.json"
    if path.exists():
        return
    write_json_atomic(path, {
        "DatasetLinks": {"raw": os.path.relpath(source.resolve(), root.resolve())},
        "Name": "mrsynth synthetic contrasts",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "mrsynth", "Version": __version__,
                         "Description": "Synthetic MRI contrasts; NOT acquired images."}],
    })


# --------------------------------------------------------------------------------------------------
# Claims and logs


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def claim(folder: Path) -> Iterator[bool]:
    """Exclusively claim ``folder`` for this process; yields False when another live run holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CLAIM_FILE
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": datetime.now(timezone.utc).isoformat()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, ValueError):
                holder = {}
            stale = holder.get("host") == me["host"] and not _pid_alive(int(holder.get("pid", -1)))
            if stale:  # its process died (kill -9, node reboot of a local disk): take over
                path.unlink(missing_ok=True)
                continue
            yield False
            return
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)
        try:
            yield True
        finally:
            path.unlink(missing_ok=True)
        return
    yield False


@contextlib.contextmanager
def subject_log(path: Path) -> Iterator[None]:
    """Send this subject's log records (INFO and up) to its own file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(min(previous, logging.INFO) if previous else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


# --------------------------------------------------------------------------------------------------
# The run


def _versions() -> dict[str, str]:
    import nibabel
    import SimpleITK
    import torch

    return {"mrsynth": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "nibabel": nibabel.__version__, "SimpleITK": SimpleITK.Version_VersionString()}


def _relative_source(path: Path, root: Path) -> str:
    """A BIDS URI for inputs inside the dataset, else the file name (no absolute paths in outputs)."""
    try:
        return f"bids:raw:{path.resolve().relative_to(root.resolve()).as_posix()}"
    except ValueError:
        return path.name


def _qc_pages(outputs: dict, inputs: dict, root: Path, label: str, force: bool, pages: list) -> list[str]:
    """QC page per synthetic output under ``root/qc`` (the index links them at the end)."""
    from mrsynth_cli.qc.report import SubjectPage, subject_report

    written = []
    for target, path in outputs.items():
        page = subject_report(path, inputs={str(c): p for c, p in inputs.items()}, out_dir=root / "qc", force=force)
        pages.append(SubjectPage(subject=f"{label} {target}", html=page))
        written.append(str(page.relative_to(root)))
    return written


def run_batch(options: BatchOptions, *, echo=print) -> BatchReport:
    """Process the selected subjects one by one; never raises for one subject's failure.

    Raises:
        InputError: the dataset, the selection or the options are unusable (before any subject runs).
        KeyboardInterrupt: after recording the interrupted subject and writing the report.
    """
    from mrsynth_cli.devices import resolve_device
    from mrsynth_cli.pipeline import SynthesisRequest, synthesize

    if options.skip_existing and options.force:
        raise InputError("--skip-existing and --force contradict each other", "give one of them")
    if not options.targets:
        raise InputError("no --target given", "name the contrast to synthesize, e.g. --target flair")
    subjects = _select(discover_subjects(options.input_dir), options)
    root = derivatives_root(options.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    if not os.access(root, os.W_OK):
        raise InputError(f"output folder {root} is not writable", "choose a folder you can write to")
    _dataset_description(root, Path(options.input_dir))
    device = resolve_device(options.device)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    logs = root / "logs"
    report_path = logs / f"run-{stamp}-{os.getpid()}_report.json"
    results: list[SubjectResult] = []
    started = time.monotonic()
    report: dict[str, Any] = {
        "mrsynth_version": __version__, "versions": _versions(), "device": str(device),
        "started": datetime.now(timezone.utc).isoformat(), "targets": [str(t) for t in options.targets],
        "part": list(options.part), "model": options.model, "seed": options.seed,
    }

    def write_report(state: str) -> None:
        write_json_atomic(report_path, {**report, "state": state, "seconds": round(time.monotonic() - started, 2),
                                        "summary": BatchReport(results, report_path, root).summary(),
                                        "subjects": [vars(r) for r in results]})

    model_cache: dict = {}
    qc_pages: list = []
    stop = False
    for subject in subjects:
        sub, ses = bids_labels(subject)
        result = SubjectResult(sub, ses, "not-run")
        results.append(result)
        if stop:
            continue
        outputs = {t: root / bids_output_name(sub, ses, t) for t in options.targets}
        inputs = {c: p for c, p in subject.files.items() if c not in options.targets}
        result.outputs = [str(p.relative_to(root)) for p in outputs.values()]
        label = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        if options.skip_existing:  # only what is missing
            outputs = {t: p for t, p in outputs.items() if not p.exists()}
            if not outputs:
                result.status = "skipped"
                echo(f"{label}: skipped (outputs exist)")
                continue
        t0 = time.monotonic()
        folder = next(iter(outputs.values())).parent
        with claim(folder) as mine:
            if not mine:
                result.status, result.error = "claimed", "another mrsynth run is processing this subject"
                echo(f"{label}: skipped (another run holds its claim file {folder / CLAIM_FILE})")
                continue
            try:
                with subject_log(logs / f"{label}_{stamp}.log"):
                    if not inputs:
                        raise InputError(f"{label} has no input contrast besides the target(s)",
                                         "the subject needs at least one other contrast")
                    request = SynthesisRequest(
                        inputs=inputs, targets=list(outputs), outputs=outputs, model=options.model,
                        sampler=options.sampler, steps=options.steps, samples=options.samples, seed=options.seed,
                        device=str(device), registration=options.registration, segmentation=options.segmentation,
                        force=options.force, weights_dir=options.weights_dir,
                        extra_sidecar={"Sources": [_relative_source(p, options.input_dir) for p in inputs.values()]},
                    )
                    synthesize(request, model_cache=model_cache)
                    if options.qc:
                        result.qc = _qc_pages(outputs, inputs, root, label, options.force, qc_pages)
                result.status = "ok"
            except MrsynthError as exc:
                result.status, result.error = "failed", exc.one_line()
            except KeyboardInterrupt:
                result.status, result.error = "interrupted", "interrupted (SIGINT/SIGTERM); no partial output"
                result.seconds = round(time.monotonic() - t0, 2)
                write_report("interrupted")
                raise
            except Exception as exc:  # a bug in one subject must not end the night's run
                log.debug("unexpected error for %s", label, exc_info=True)
                first = (str(exc).splitlines() or [""])[0][:200]
                result.status = "failed"
                result.error = f"internal error ({type(exc).__name__}: {first}); rerun with MRSYNTH_DEBUG=1"
            result.seconds = round(time.monotonic() - t0, 2)
        if result.status == "ok":
            echo(f"{label}: ok ({result.seconds:.1f} s)")
        else:
            echo(f"{label}: FAILED: {result.error}")
            stop = options.fail_fast
            if options.qc:
                from mrsynth_cli.qc.report import SubjectPage

                qc_pages.append(SubjectPage(subject=label, status="failed", error=result.error or ""))
        write_report("running")
    report["models_loaded"] = len(model_cache)
    if options.qc and qc_pages:
        from mrsynth_cli.qc.report import index_report

        report["qc_index"] = str(index_report(qc_pages, root / "qc", title="mrsynth batch QC").relative_to(root))
    write_report("finished")
    return BatchReport(results, report_path, root)
