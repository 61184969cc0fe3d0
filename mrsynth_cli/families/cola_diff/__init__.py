"""``cola-diff``: CoLa-Diff (Jiang et al., MICCAI 2023), a many-to-one conditioned latent diffusion model.

Parts: a KL autoencoder shared by every contrast (:mod:`.autoencoder`, trained first by
``mrsynth train autoencoder``), the latent noise predictor with residual bottleneck blocks, AFF-fused
large kernels, transformer blocks, similar cooperative filtering of the skips and auto-weight
adaptation of the conditions (:mod:`.network`, :mod:`.blocks`, :mod:`.filtering`, :mod:`.wavelets`,
:mod:`.auto_weight`), structural guidance from tissue masks, and the loss L_eps + L_KL with a learned
variance (:mod:`.losses`). Presets: ``configs/cpu.toml`` and ``configs/paper.toml``.
"""
