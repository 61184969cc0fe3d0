"""``mmdm``: MMDM (Yu et al., MICCAI 2025), TOF-MRA from T1/T2/FLAIR by multi-path Brownian-bridge diffusion.

Parts: one Brownian bridge per source contrast (eqs. 1-3, :mod:`mrsynth_cli.sampling.bridge`), a
time-conditioned Restormer-UNet per path and the cross-modal dynamic fusion (eq. 4, :mod:`.network`,
:mod:`.fusion`), the Gumbel-softmax cumulative MIP loss and the noise-adaptive weighting (eqs. 5-11,
:mod:`.losses`), 2.5D windows with overlap averaging (:mod:`.windows`), training (:mod:`.train`) and
sampling (:mod:`.inference`). Presets: ``configs/cpu.toml`` and ``configs/paper.toml``.
"""
