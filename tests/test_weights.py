"""Manifest validation, hash checks, offline behaviour and the registry contract."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from mrsynth_cli.errors import InputError
from mrsynth_cli.families.base import REQUIRED_FUNCTIONS
from mrsynth_cli.registry import FAMILIES, get_family
from mrsynth_cli.weights.manifest import load_manifest, packaged_manifest_path
from mrsynth_cli.weights.store import WeightsError, ensure_files

SHA = "0" * 64
REV = "a" * 40


def _manifest(tmp_path: Path, files: str, extra: str = "") -> Path:
    path = tmp_path / "m.toml"
    path.write_text(
        f"""schema_version = 1
[[model]]
name = "m1"
family = "unet"
version = "1.0"
inputs = ["T1", "T2"]
outputs = ["FLAIR"]
geometry = {{ dims = "2D" }}
config = {{}}
licence = "MIT"
training_data = "test"
{extra}
{files}
"""
    )
    return path


def test_packaged_manifest_is_valid() -> None:
    entries = load_manifest(packaged_manifest_path())
    assert all(e.family in FAMILIES for e in entries)


def test_hub_file_needs_pinned_revision(tmp_path: Path) -> None:
    good = '[[model.files]]\nrepo_id = "org/repo"\nrevision = "%s"\nfilename = "w.safetensors"\nsha256 = "%s"\nsize = 10\n'
    assert load_manifest(_manifest(tmp_path, good % (REV, SHA)))[0].files[0].revision == REV
    with pytest.raises(InputError, match="40-character commit"):
        load_manifest(_manifest(tmp_path, good % ("main", SHA)))
    with pytest.raises(InputError, match="sha256"):
        load_manifest(_manifest(tmp_path, good % (REV, "xyz")))


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    files = '[[model.files]]\npath = "w.safetensors"\nsha256 = "%s"\nsize = 10\n' % SHA
    with pytest.raises(InputError, match="unknown keys"):
        load_manifest(_manifest(tmp_path, files, extra='colour = "red"'))


def test_offline_missing_hub_file_prints_fetch_command(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MRSYNTH_OFFLINE", "1")
    files = '[[model.files]]\nrepo_id = "org/repo"\nrevision = "%s"\nfilename = "w.safetensors"\nsha256 = "%s"\nsize = 10\n'
    entry = load_manifest(_manifest(tmp_path, files % (REV, SHA)))[0]
    with pytest.raises(WeightsError) as info:
        ensure_files(entry, tmp_path / "weights", allow_download=True)
    assert "mrsynth weights fetch m1" in info.value.one_line()
    assert not (tmp_path / "weights").exists()  # nothing written, no network


def test_every_family_adapter_fulfils_the_contract() -> None:
    for name, spec in FAMILIES.items():
        module = importlib.import_module(spec.adapter)
        missing = [f for f in REQUIRED_FUNCTIONS if not callable(getattr(module, f, None))]
        assert not missing, f"{name} adapter lacks {missing}"


def test_unknown_family_suggests() -> None:
    with pytest.raises(InputError) as info:
        get_family("unte")
    assert "did you mean 'unet'" in info.value.one_line()
