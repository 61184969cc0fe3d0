"""Reading and writing volumes, contrast names, subjects and sidecars."""
