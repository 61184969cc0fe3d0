"""Automatic model choice: family preference, and models that need TR/TE only when TR/TE were given."""

from __future__ import annotations

from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.routing import choose_models
from mrsynth_cli.weights.manifest import ModelEntry

T1, T2, FLAIR = Contrast.T1, Contrast.T2, Contrast.FLAIR


def _entry(name: str, family: str, automatic: bool = True) -> ModelEntry:
    return ModelEntry(name=name, family=family, version="0", inputs=(T1, T2), outputs=(FLAIR,), geometry={},
                      config={}, files=(), licence="", training_data="", min_inputs=1, automatic=automatic)


def test_physics_family_only_when_tr_te_given() -> None:
    entries = [_entry("base", "unet"), _entry("phys", "mrdiff")]
    assert choose_models(entries, {T1, T2}, [FLAIR])[FLAIR].name == "base"
    assert choose_models(entries, {T1, T2}, [FLAIR], physics=True)[FLAIR].name == "phys"
    # Named explicitly, it is used (and then asks for TR/TE itself).
    assert choose_models(entries, {T1, T2}, [FLAIR], model="phys")[FLAIR].name == "phys"


def test_diffusion_family_preferred_over_baseline() -> None:
    entries = [_entry("base", "unet"), _entry("latent", "cola-diff")]
    assert choose_models(entries, {T1, T2}, [FLAIR])[FLAIR].name == "latent"


def test_model_marked_not_automatic_runs_only_when_named() -> None:
    entries = [_entry("base", "unet"), _entry("latent", "cola-diff", automatic=False)]
    assert choose_models(entries, {T1, T2}, [FLAIR])[FLAIR].name == "base"
    assert choose_models(entries, {T1, T2}, [FLAIR], model="latent")[FLAIR].name == "latent"
