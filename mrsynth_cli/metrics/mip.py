"""Maximum intensity projections (MIPs) along the anatomical axes, for TOF-MRA scoring.

The volume is first reoriented to the closest canonical RAS+ voxel order with
:mod:`nibabel.orientations` (a permutation and flips of the voxel axes, no resampling), so that
array axis 0 runs to the subject's Right, axis 1 to Anterior and axis 2 to Superior whatever the
file's storage order. Then:

* ``axial``: maximum along S, an image indexed [R, A];
* ``coronal``: maximum along A, an image indexed [R, S];
* ``sagittal``: maximum along R, an image indexed [A, S].
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

__all__ = ["PROJECTIONS", "to_canonical", "axial_axis", "maximum_intensity_projections"]

#: The projections and the canonical (RAS) axis each one collapses.
PROJECTIONS: dict[str, int] = {"axial": 2, "coronal": 1, "sagittal": 0}


def to_canonical(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``data`` with its voxel axes permuted and flipped to the closest RAS+ order of ``affine``."""
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {data.shape}")
    ornt = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    return nib.orientations.apply_orientation(data, ornt)


def axial_axis(affine: np.ndarray) -> int:
    """The voxel axis of a volume with ``affine`` that is closest to the superior-inferior direction.

    Slices taken across this axis are the axial slices.
    """
    ornt = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    return int(np.flatnonzero(ornt[:, 0] == 2)[0])


def maximum_intensity_projections(data: np.ndarray, affine: np.ndarray) -> dict[str, np.ndarray]:
    """Axial, coronal and sagittal MIPs of a 3D volume after reorientation to closest canonical RAS.

    Args:
        data: 3D array in the file's voxel order.
        affine: its 4×4 voxel-to-world (RAS+ mm) affine.

    Returns:
        ``{"axial": [R, A] image (max along S), "coronal": [R, S] image (max along A),
        "sagittal": [A, S] image (max along R)}``, each index increasing towards R, A and S.
    """
    canonical = to_canonical(data, affine)
    return {name: canonical.max(axis=axis) for name, axis in PROJECTIONS.items()}
