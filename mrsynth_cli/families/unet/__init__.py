"""``unet``: a deterministic 2D regression UNet baseline (the in-run reference every diffusion family must beat)."""
