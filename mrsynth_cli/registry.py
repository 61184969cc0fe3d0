"""The one explicit table of model families: name -> what it does and where its adapter lives.

Adapters are named by import path so that ``mrsynth --help`` never imports torch. Each adapter
module provides the same functions (see :mod:`mrsynth_cli.families.base`).
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from types import ModuleType

from mrsynth_cli.errors import InputError

__all__ = ["FamilySpec", "FAMILIES", "get_family", "load_adapter"]


@dataclass(frozen=True)
class FamilySpec:
    """A model family.

    Attributes:
        name: the family's name in the manifest and on the command line.
        description: one line for ``mrsynth weights list`` and ``--help``.
        adapter: import path of the module implementing the family contract.
        mapping: ``many-to-one``, ``one-to-many`` or ``one-to-one``.
        dims: ``2D``, ``2.5D`` or ``3D``.
        stochastic: whether outputs are sampled (seeds, samplers and steps apply).
        separate_parts: parts trained by their own ``mrsynth train`` command before the family's
            network (e.g. a latent model's autoencoder); the network's checkpoint then holds them.
        needs_acquisition: the model reads each input's TR/TE (``--tr/--te`` or sidecars); automatic
            model choice considers it only when the user gave ``--tr/--te``.
    """

    name: str
    description: str
    adapter: str
    mapping: str
    dims: str
    stochastic: bool
    separate_parts: tuple[str, ...] = ()
    needs_acquisition: bool = False


FAMILIES: dict[str, FamilySpec] = {
    "unet": FamilySpec(
        name="unet",
        description="deterministic 2D regression UNet baseline (any subset of inputs -> one target)",
        adapter="mrsynth_cli.families.unet.adapter",
        mapping="many-to-one",
        dims="2D",
        stochastic=False,
    ),
    "cola-diff": FamilySpec(
        name="cola-diff",
        description="CoLa-Diff conditioned latent diffusion, 2D (any subset of inputs -> one target; "
        "autoencoder trained first by 'mrsynth train autoencoder')",
        adapter="mrsynth_cli.families.cola_diff.adapter",
        mapping="many-to-one",
        dims="2D",
        stochastic=True,
        separate_parts=("autoencoder",),
    ),
    "mrdiff": FamilySpec(
        name="mrdiff",
        description="MRDiff physics-regularised diffusion, 2D (all inputs with their TR/TE -> one target)",
        adapter="mrsynth_cli.families.mrdiff.adapter",
        mapping="many-to-one",
        dims="2D",
        stochastic=True,
        needs_acquisition=True,
    ),
    "aldm": FamilySpec(
        name="aldm",
        description="ALDM 3D latent diffusion with VQ-GAN and MS-SPADE (one source -> any other contrast; "
        "trained in three stages by 'mrsynth train aldm --stage vqgan|spade|ldm')",
        adapter="mrsynth_cli.families.aldm.adapter",
        mapping="one-to-many",
        dims="3D",
        stochastic=True,
        separate_parts=("vqgan", "spade"),
    ),
    "mmdm": FamilySpec(
        name="mmdm",
        description="MMDM multi-path Brownian-bridge diffusion, 2.5D (T1/T2/FLAIR -> TOF-MRA, with MIPs)",
        adapter="mrsynth_cli.families.mmdm.adapter",
        mapping="many-to-one",
        dims="2.5D",
        stochastic=True,
    ),
}


def get_family(name: str) -> FamilySpec:
    """Look up a family, with a did-you-mean suggestion."""
    if name in FAMILIES:
        return FAMILIES[name]
    close = difflib.get_close_matches(name, list(FAMILIES), n=1)
    guess = f"did you mean '{close[0]}'? " if close else ""
    raise InputError(f"unknown model family '{name}'", f"{guess}families: {', '.join(FAMILIES)}")


def load_adapter(name: str) -> ModuleType:
    return importlib.import_module(get_family(name).adapter)
