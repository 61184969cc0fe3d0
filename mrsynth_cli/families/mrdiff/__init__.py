"""``mrdiff``: MRDiff (Shin et al., MICCAI 2025), physics-driven signal regularisation in a diffusion model.

Parts: Haar sub-bands in and out (:mod:`.subbands`, over the project's DWT), the encoder / generator /
condition decoder network (:mod:`.network`), the MR-physics module with each input's TR/TE(/TI)
(:mod:`.physics`), the losses L_G, L_D and L_CCT (:mod:`.losses`), training (:mod:`.train`) and
sampling (:mod:`.inference`). Presets: ``configs/cpu.toml`` and ``configs/paper.toml``.
"""
