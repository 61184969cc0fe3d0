"""The weights manifest, the local weights store, integrity checks and downloads."""
