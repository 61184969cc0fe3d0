"""QC reports: per synthetic volume a PNG montage and a self-contained HTML page; an index for a batch.

The subject page (``<stem>_qc.html``) carries its montage as a base64 ``data:`` URI and its CSS
inline; it needs no JavaScript and refers to no URL of any kind (a Content-Security-Policy in the
page forbids loading anything but ``data:`` images), so it can be mailed or archived on its own.
It says prominently that the image is SYNTHETIC, and shows the model (name, version, sha256),
the sampler, steps, seed, device, preprocessing backends and timings from the synthesis sidecar,
and, when an acquired reference is given, an absolute-error map and the metrics of
:func:`mrsynth_cli.metrics.evaluate.evaluate_volumes` (the project's one scoring normalisation).

Privacy: file paths appear only as file names; every other text taken from a sidecar or an error
message has absolute paths cut down to their last component and is HTML-escaped.

Every file is written atomically (a reader sees the whole file or none).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mrsynth_cli import __version__
from mrsynth_cli.errors import ContrastError, InputError
from mrsynth_cli.io.atomic import check_writable, write_bytes_atomic
from mrsynth_cli.io.contrasts import contrast_from_filename, nifti_stem, parse_contrast

__all__ = [
    "SubjectPage",
    "subject_report",
    "index_report",
    "qc_paths",
    "read_sidecar",
    "sidecar_inputs",
    "sidecar_uncertainty",
    "scrub_paths",
]

#: Metrics shown in the table, in order, with their labels.
METRIC_LABELS = {
    "psnr": "PSNR (dB)",
    "ssim3d": "SSIM 3D",
    "ssim2d_axial": "SSIM 2D (mean axial)",
    "nmse": "NMSE",
    "mae": "MAE",
    "fsim": "FSIM (axial)",
    "gmsd": "GMSD (axial)",
}
#: Labels of the sidecar's timing fields.
_TIMING_LABELS = {"SecondsElapsed": "synthesis, wall clock"}
#: Longest side of an index thumbnail, in pixels.
THUMBNAIL_SIZE = 360
#: Nothing but inline CSS and data: images may load.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
# An absolute POSIX or Windows path (or ~/...): cut to its last component. A path that ends in a known
# file extension may contain spaces (messages print paths unquoted); any other path ends at a space.
_PATH_START = r"(?<![\w.~<])(?:~?/|[A-Za-z]:\\)"
_FILE_PATH = re.compile(
    _PATH_START + r"[^\n'\"<>|;]*?\.(?:nii\.gz|nii|json|tfm|txt|h5|mat|png|html|safetensors|pt|pth|ckpt|tsv|csv)"
    r"(?=$|[\s'\"<>|:;,.)\]}])",
    re.IGNORECASE,
)
_ABS_PATH = re.compile(_PATH_START + r"[^\s'\"<>|:;,()\[\]{}]+")

_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       background: #f5f5f2; color: #1a1a1a; }
main { max-width: 1180px; margin: 0 auto; padding: 0 20px 40px; }
.synthetic { background: #b00020; color: #fff; padding: 14px 20px; margin: 0 0 18px; }
.synthetic .badge { display: inline-block; font-weight: 800; font-size: 28px; letter-spacing: 0.12em;
                    border: 3px solid #fff; padding: 2px 12px; margin-right: 14px; vertical-align: middle; }
.synthetic h1 { display: inline; font-size: 22px; vertical-align: middle; }
.synthetic p { margin: 8px 0 0; }
h2 { font-size: 17px; margin: 26px 0 8px; border-bottom: 1px solid #c8c8c0; padding-bottom: 3px; }
table { border-collapse: collapse; background: #fff; }
th, td { text-align: left; padding: 4px 10px; border: 1px solid #d8d8d0; vertical-align: top; }
th { background: #ecece6; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font: 13px/1.3 ui-monospace, Menlo, Consolas, monospace; word-break: break-all; }
figure { margin: 0; }
figure img { display: block; max-width: 100%; height: auto; background: #000; }
figcaption, .note { color: #555; font-size: 13px; margin-top: 6px; }
.status-ok { color: #1b6e20; font-weight: 600; }
.status-failed { color: #b00020; font-weight: 600; }
td.thumb img { display: block; max-width: 360px; height: auto; background: #000; }
footer { color: #555; font-size: 13px; margin-top: 30px; }
"""


@dataclass(frozen=True)
class SubjectPage:
    """One row of the index: a subject's QC page, or why the subject failed.

    Attributes:
        subject: the label shown (e.g. ``sub-01`` or ``sub-01 ses-1``).
        html: the subject's QC page (``None`` when it failed before one was written).
        png: its montage (default: the page's ``_qc.png`` sibling).
        status: ``"ok"`` or ``"failed"``.
        error: a one-line error for a failed subject.
    """

    subject: str
    html: Path | None = None
    png: Path | None = None
    status: str = "ok"
    error: str = ""


def qc_paths(synthetic: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """``(<stem>_qc.png, <stem>_qc.html)`` for a synthetic volume, in ``out_dir`` or beside it."""
    synthetic = Path(synthetic)
    folder = Path(out_dir) if out_dir is not None else synthetic.parent
    stem = nifti_stem(synthetic)
    return folder / f"{stem}_qc.png", folder / f"{stem}_qc.html"


def scrub_paths(text: str) -> str:
    """``text`` with every absolute path replaced by its last component (patient folders stay private)."""

    def last(match: re.Match) -> str:
        parts = [p for p in re.split(r"[\\/]", match.group(0).rstrip("/\\")) if p]
        return parts[-1] if parts else match.group(0)

    return _ABS_PATH.sub(last, _FILE_PATH.sub(last, text))


def _e(value: Any) -> str:
    """Scrubbed and HTML-escaped text of any value."""
    return html.escape(scrub_paths(str(value)), quote=True)


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


# ------------------------------------------------------------------------------------------------
# Sidecar


def read_sidecar(synthetic: str | Path) -> dict[str, Any] | None:
    """The JSON sidecar written beside a synthetic volume, or ``None`` if there is none.

    Raises:
        InputError: the sidecar exists but is not a JSON object.
    """
    from mrsynth_cli.pipeline import sidecar_path

    path = sidecar_path(Path(synthetic))
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"the sidecar {path} is not readable JSON ({type(exc).__name__})",
                         "restore it from the synthesis run, or give the inputs with --in") from None
    if not isinstance(data, dict):
        raise InputError(f"the sidecar {path} is not a JSON object", "give the inputs with --in")
    return data


def _locate(recorded: str, synthetic: Path, what: str) -> Path:
    """A path recorded in a sidecar: as written (relative to the working folder), else beside the output."""
    path = Path(recorded)
    if path.exists():
        return path
    if not path.is_absolute() and (synthetic.parent / path).exists():
        return synthetic.parent / path
    raise InputError(
        f"the {what} {path.name} recorded in the sidecar of {synthetic.name} was not found ({recorded})",
        "give it with --in (inputs) or --uncertainty where it is now",
    )


def _label_for(path: str | Path) -> str:
    try:
        contrast = contrast_from_filename(path)
    except ContrastError:
        contrast = None
    return str(contrast) if contrast is not None else nifti_stem(path)


def sidecar_inputs(sidecar: Mapping[str, Any], synthetic: str | Path) -> dict[str, Path]:
    """The inputs a sidecar records (``Sources``, labelled by ``SourceContrasts`` or the file names).

    Raises:
        InputError: the sidecar records no sources, or one of them is not found.
    """
    synthetic = Path(synthetic)
    sources = sidecar.get("Sources")
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
        raise InputError(f"the sidecar of {synthetic.name} records no input files (Sources)",
                         "give the inputs with --in contrast=path ...")
    labels = sidecar.get("SourceContrasts")
    if not (isinstance(labels, list) and len(labels) == len(sources)):
        labels = [_label_for(s) for s in sources]
    out: dict[str, Path] = {}
    for label, source in zip(labels, sources, strict=True):
        key = str(label)
        while key in out:
            key += "'"
        out[key] = _locate(source, synthetic, "input")
    return out


def sidecar_uncertainty(sidecar: Mapping[str, Any], synthetic: str | Path) -> Path | None:
    """The uncertainty map a sidecar records (``Uncertainty``), or ``None``.

    Raises:
        InputError: it is recorded but not found.
    """
    recorded = sidecar.get("Uncertainty")
    if not isinstance(recorded, str) or not recorded:
        return None
    return _locate(recorded, Path(synthetic), "uncertainty map")


def _target_label(sidecar: Mapping[str, Any], synthetic: Path) -> str:
    target = sidecar.get("Target")
    if isinstance(target, str) and target:
        return target
    config = (sidecar.get("Model") or {}).get("Config") if isinstance(sidecar.get("Model"), dict) else None
    if isinstance(config, dict) and isinstance(config.get("target"), str):
        return config["target"]
    try:
        contrast = contrast_from_filename(synthetic)
    except ContrastError:
        contrast = None
    if contrast is None:  # synthesize --out-dir names end in _desc-synth_<TARGET>
        try:
            contrast = parse_contrast(nifti_stem(synthetic).rsplit("_", 1)[-1])
        except ContrastError:
            contrast = None
    return str(contrast) if contrast is not None else "output"


# ------------------------------------------------------------------------------------------------
# PNG


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _centre_mm(volume) -> list[float]:
    centre = (np.array(volume.shape, dtype=float) - 1.0) / 2.0
    return [float(v) for v in (volume.affine @ np.array([*centre, 1.0]))[:3]]


# ------------------------------------------------------------------------------------------------
# HTML


def _table(rows: Iterable[tuple[str, str]], header: tuple[str, str] | None = None, numeric: bool = False) -> str:
    """Rows of (escaped label, already-escaped HTML cell)."""
    head = f"<tr><th>{_e(header[0])}</th><th>{_e(header[1])}</th></tr>" if header else ""
    td = "<td class='num'>" if numeric else "<td>"
    body = "".join(f"<tr><th>{_e(k)}</th>{td}{v}</td></tr>" for k, v in rows)
    return f"<table>{head}{body}</table>"


def _value(value: Any) -> str:
    if value is None or value == "":
        return "<span class='note'>—</span>"
    if isinstance(value, (dict, list)):
        return f"<code>{_e(json.dumps(value, default=str))}</code>"
    return _e(value)


def _format_metric(value: Any) -> str:
    if value is None:
        return "inf"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else ("nan" if math.isnan(value) else f"{value:.4f}")
    return _e(value)


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">\n"
        "<meta name=\"referrer\" content=\"no-referrer\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _subject_html(
    *,
    synthetic: Path,
    target: str,
    sidecar: Mapping[str, Any],
    inputs: Mapping[str, Path],
    uncertainty: Path | None,
    reference: Path | None,
    result: Mapping[str, Any] | None,
    png: bytes,
    png_name: str,
    size: tuple[int, int],
    row_names: list[str],
) -> str:
    parts: list[str] = []
    description = sidecar.get("Description") or f"Synthetic {target} image generated by mrsynth; NOT an acquired image."
    parts.append(
        "<header class=\"synthetic\" id=\"synthetic-label\"><span class=\"badge\">SYNTHETIC</span>"
        f"<h1>{_e(target)} — synthesized, not acquired</h1>"
        f"<p>{_e(description)}</p><p>Output <code>{_e(synthetic.name)}</code></p></header>"
    )
    parts.append("<main>")
    alt = f"QC montage of the SYNTHETIC {target} ({', '.join(row_names)}): axial, coronal and sagittal slices"
    parts.append(
        "<section><h2>Montage</h2><figure>"
        f"<img id=\"montage\" src=\"{_data_uri(png)}\" width=\"{size[0]}\" height=\"{size[1]}\" alt=\"{_e(alt)}\">"
        f"<figcaption>Rows: {_e(', '.join(row_names))}. Each row is windowed from its own 0.5th to 99.5th "
        "percentile; slices through the centre of the synthetic volume, neurological convention (subject's "
        f"right on the right). Also written as <code>{_e(png_name)}</code>.</figcaption></figure></section>"
    )

    rows = [(label, f"<code>{_e(Path(p).name)}</code>") for label, p in inputs.items()]
    rows.append((f"SYNTHETIC {target}", f"<code>{_e(synthetic.name)}</code>"))
    if uncertainty is not None:
        rows.append(("uncertainty (std of the draws)", f"<code>{_e(uncertainty.name)}</code>"))
    if reference is not None:
        rows.append(("reference (acquired)", f"<code>{_e(reference.name)}</code>"))
    parts.append("<section><h2>Files</h2>" + _table(rows) + "</section>")

    if not sidecar:
        parts.append("<section><h2>Model</h2><p class=\"note\">No sidecar was found beside the synthetic file: "
                     "model, sampler and timings are unknown.</p></section>")
    else:
        model = sidecar.get("Model") if isinstance(sidecar.get("Model"), dict) else {}
        files = model.get("Files") if isinstance(model.get("Files"), list) else []
        file_cells = "<br>".join(
            f"<code>{_e(f.get('name', ''))}</code> sha256 <code>{_e(f.get('sha256', ''))}</code>"
            for f in files if isinstance(f, dict)
        )
        parts.append("<section><h2>Model</h2>" + _table([
            ("name", _value(model.get("Name"))),
            ("family", _value(model.get("Family"))),
            ("version", _value(model.get("Version"))),
            ("files", file_cells or _value(None)),
        ]) + "</section>")
        parts.append("<section><h2>Sampling</h2>" + _table([
            ("sampler", _value(sidecar.get("Sampler"))),
            ("steps", _value(sidecar.get("Steps"))),
            ("samples", _value(sidecar.get("Samples"))),
            ("seed", _value(sidecar.get("Seed"))),
            ("device", _value(sidecar.get("Device"))),
            *([("device fallback", _value(sidecar["DeviceFallback"]))] if sidecar.get("DeviceFallback") else []),
        ]) + "</section>")
        backends = sidecar.get("Backends") if isinstance(sidecar.get("Backends"), dict) else {}
        parts.append("<section><h2>Preprocessing backends</h2>"
                     + (_table([(k, _value(v)) for k, v in backends.items()]) if backends
                        else "<p class=\"note\">none recorded</p>") + "</section>")
        timings = [(_TIMING_LABELS.get(k, k), v) for k, v in sidecar.items() if k.startswith("Seconds")]
        if isinstance(sidecar.get("Timings"), dict):
            timings += list(sidecar["Timings"].items())
        parts.append("<section><h2>Timings</h2>"
                     + (_table([(k, f"{_e(v)} s") for k, v in timings]) if timings
                        else "<p class=\"note\">none recorded</p>") + "</section>")
        generated = sidecar.get("GeneratedBy")
        if isinstance(generated, list) and generated:
            tools = ", ".join(f"{g.get('Name', '?')} {g.get('Version', '')}".strip()
                              for g in generated if isinstance(g, dict))
            parts.append(f"<section><h2>Generated by</h2><p>{_e(tools)}</p></section>")

    if result is not None:
        metric_rows = [
            (label, _format_metric(result["metrics"].get(key)))
            for key, label in METRIC_LABELS.items() if key in result["metrics"]
        ]
        for view, values in (result.get("mip") or {}).items():
            for name, value in values.items():
                metric_rows.append((f"MIP {view} {name.upper()}", _format_metric(value)))
        mask = str(result.get("mask", ""))
        mask = mask if mask.startswith("auto") else Path(mask).name
        parts.append(
            "<section id=\"metrics\"><h2>Metrics against the reference</h2>"
            + _table(metric_rows, header=("metric", "value"), numeric=True)
            + f"<p class=\"note\">Reference <code>{_e(reference.name if reference else '')}</code>; brain mask: "
            f"{_e(mask)} ({_e(result.get('mask_voxels', ''))} voxels). {_e(result.get('normalisation', ''))} "
            "The error map shows |synthetic − reference| after this normalisation, inside the mask.</p></section>"
        )
    else:
        parts.append("<section id=\"metrics\"><h2>Metrics</h2><p class=\"note\">No reference was given: no error "
                     "map or metrics (<code>mrsynth report SYNTHETIC --ref REFERENCE.nii.gz</code> adds them).</p>"
                     "</section>")
    parts.append(f"<footer>QC report written by mrsynth {_e(__version__)}. The image above is SYNTHETIC: "
                 "it was computed by a model, not acquired from the patient.</footer></main>")
    return _page(f"SYNTHETIC {target} — QC — {synthetic.name}", "\n".join(parts))


# ------------------------------------------------------------------------------------------------
# Public API


def subject_report(
    synthetic: str | Path,
    *,
    inputs: Mapping[str, str | Path],
    uncertainty: str | Path | None = None,
    reference: str | Path | None = None,
    out_dir: str | Path | None = None,
    sidecar: Mapping[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write ``<stem>_qc.png`` and ``<stem>_qc.html`` for one synthetic volume; return the HTML path.

    Args:
        synthetic: the synthetic NIfTI volume.
        inputs: row label (e.g. ``"T1"``) -> input volume, shown first in the montage.
        uncertainty: the voxel-wise std map of the draws, if one was written.
        reference: an acquired volume of the target contrast on the synthetic's grid: adds a
            reference row, an absolute-error row and the metrics table.
        out_dir: folder for the two files (default: beside ``synthetic``).
        sidecar: the synthesis sidecar (default: read from beside ``synthetic``; none is fine).
        force: overwrite existing report files.

    Raises:
        InputError: a volume is missing or unusable, or a report file exists and not ``force``.
        GeometryError: the reference is not on the synthetic's grid.
    """
    from mrsynth_cli.io.volume import load_volume
    from mrsynth_cli.metrics.evaluate import evaluate_volumes, is_tof_reference
    from mrsynth_cli.metrics.normalise import auto_brain_mask, robust_scale
    from mrsynth_cli.qc.montage import MIP_KEYWORDS, montage_image

    synthetic = Path(synthetic)
    png_path, html_path = qc_paths(synthetic, out_dir)
    check_writable(png_path, force=force)
    check_writable(html_path, force=force)
    if sidecar is None:
        sidecar = read_sidecar(synthetic) or {}
    target = _target_label(sidecar, synthetic)

    synth = load_volume(synthetic)
    rows: dict[str, Any] = {}
    for label, path in inputs.items():
        rows[str(label)] = load_volume(path)
    rows[f"SYNTHETIC {target}"] = synth
    uncertainty = Path(uncertainty) if uncertainty is not None else None
    if uncertainty is not None:
        rows["uncertainty (std)"] = load_volume(uncertainty, is_mask=True)  # may be 0 outside the brain
    result = None
    reference = Path(reference) if reference is not None else None
    if reference is not None:
        ref = load_volume(reference)
        tof = target.upper() == "TOF" or is_tof_reference(reference)
        result = evaluate_volumes(synth, ref, tof=tof)  # checks the grids first
        brain, _ = auto_brain_mask(ref.data)  # the mask evaluate_volumes used (no mask given)
        error = np.where(brain, np.abs(robust_scale(synth.data, brain) - robust_scale(ref.data, brain)), 0.0)
        rows[f"reference {target}"] = ref
        rows["|synth - ref|"] = synth.with_data(error.astype(np.float32))

    image = montage_image(rows, point_mm=_centre_mm(synth))
    png = _png_bytes(image)
    page = _subject_html(
        synthetic=synthetic, target=target, sidecar=sidecar, inputs={k: Path(v) for k, v in inputs.items()},
        uncertainty=uncertainty, reference=reference, result=result, png=png, png_name=png_path.name,
        size=image.size, row_names=[shown for name in rows for shown in (
            [name, f"{name} MIP"] if any(k in name.lower() for k in MIP_KEYWORDS) else [name])],
    )
    write_bytes_atomic(png_path, png)
    write_bytes_atomic(html_path, page.encode("utf-8"))
    return html_path


def _thumbnail(png_path: Path | None) -> str | None:
    from PIL import Image

    if png_path is None or not png_path.is_file():
        return None
    try:
        with Image.open(png_path) as image:
            image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            return _data_uri(_png_bytes(image))
    except (OSError, ValueError):
        return None


def _href(target: Path, out_dir: Path) -> str:
    relative = os.path.relpath(target.resolve(), out_dir.resolve())
    return urllib.parse.quote(Path(relative).as_posix())


def index_report(subject_pages: Iterable[SubjectPage | str | Path], out_dir: str | Path, *,
                 title: str = "mrsynth QC") -> Path:
    """Write ``index.html`` in ``out_dir`` linking every subject page, with status and thumbnails.

    Args:
        subject_pages: :class:`SubjectPage` rows, or paths of subject pages (each counted ``ok``, its
            subject named after the file).
        out_dir: where ``index.html`` goes; links to the pages are relative to it.
        title: the page title.

    The index is rewritten on every call (it summarises whatever pages are given), atomically.
    Thumbnails are embedded as ``data:`` URIs, so the only references are the relative links.
    """
    out_dir = Path(out_dir)
    pages = [
        p if isinstance(p, SubjectPage)
        else SubjectPage(subject=Path(p).name.removesuffix(".html").removesuffix("_qc"), html=Path(p))
        for p in subject_pages
    ]
    n_ok = sum(p.status == "ok" for p in pages)
    rows = []
    for page in pages:
        status = "ok" if page.status == "ok" else "failed"
        link = _href(page.html, out_dir) if page.html is not None and page.html.is_file() else None
        png = page.png or (page.html.with_name(page.html.name.removesuffix(".html") + ".png") if page.html else None)
        thumb = _thumbnail(png) if status == "ok" else None
        name = _e(page.subject)
        subject_cell = f"<a href=\"{html.escape(link, quote=True)}\">{name}</a>" if link else name
        status_cell = f"<span class=\"status-{status}\">{status}</span>"
        if page.error:
            status_cell += f"<br><span class=\"note\">{_e(_one_line(page.error))}</span>"
        thumb_cell = ""
        if thumb is not None:
            img = f"<img src=\"{thumb}\" alt=\"QC montage of {name}\">"
            thumb_cell = f"<a href=\"{html.escape(link, quote=True)}\">{img}</a>" if link else img
        rows.append(f"<tr class=\"row-{status}\"><td>{subject_cell}</td><td>{status_cell}</td>"
                    f"<td class=\"thumb\">{thumb_cell}</td></tr>")
    body = (
        "<header class=\"synthetic\"><span class=\"badge\">SYNTHETIC</span>"
        f"<h1>{_e(title)}</h1><p>{len(pages)} subject(s): {n_ok} ok, {len(pages) - n_ok} failed. "
        "Every image linked here is SYNTHETIC (computed by a model, not acquired).</p></header><main>"
        "<table><tr><th>subject</th><th>status</th><th>montage</th></tr>" + "".join(rows) + "</table>"
        f"<footer>Index written by mrsynth {_e(__version__)}.</footer></main>"
    )
    path = out_dir / "index.html"
    write_bytes_atomic(path, _page(title, body).encode("utf-8"))
    return path
