"""The contract every family adapter module fulfils (checked by ``tests/test_registry.py``).

``config_from_dict(data) -> config``
    Strictly validate a resolved config (unknown keys are errors).
``describe(config) -> dict``
    ``{"inputs": [...], "outputs": [...], "min_inputs": int, "geometry": {...}}`` for the manifest.
``preprocess_options(config) -> dict``
    Keyword arguments for :class:`~mrsynth_cli.preprocessing.run.PreprocessOptions` (model grid,
    whether tissue masks are needed).
``load_model(config, weights, device) -> model``
    Build the network(s) and load the safetensors state dict strictly.
``synthesize(model, config, prep, targets, *, sampler, steps, generator, device, progress) -> dict``
    Model-space arrays in [0, 1] per target contrast, from a
    :class:`~mrsynth_cli.preprocessing.run.PreprocessResult`.
"""

from __future__ import annotations

REQUIRED_FUNCTIONS = ("config_from_dict", "describe", "preprocess_options", "load_model", "synthesize")
