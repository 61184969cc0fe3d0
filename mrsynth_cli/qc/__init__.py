"""Quality-control pictures of volumes (PNG montages)."""

from mrsynth_cli.qc.montage import montage_image, write_montage

__all__ = ["montage_image", "write_montage"]
