"""Model families: one folder each, adapted to one contract (see :mod:`mrsynth_cli.registry`)."""
