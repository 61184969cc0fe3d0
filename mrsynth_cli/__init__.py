"""mrsynth: synthesize a missing MRI contrast from the contrasts a scan has.

This module holds only the version string so that ``mrsynth --help`` stays fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
