"""Write image and label volumes as NIfTI-1 with an explicit RAS affine.

medpipe arrays are indexed ``[i, j, k]`` (column, row, slice); NIfTI voxel axes are the same array axes,
so the array is written as is and the affine maps ``(i, j, k)`` to RAS millimetres (for an LPS affine
``A``, pass ``diag(-1, -1, 1, 1) @ A``). Both qform and sform carry the affine (code 1, scanner) so
every reader (nibabel, SimpleITK, ITK-SNAP, MONAI's ``LoadImage``) agrees on the geometry.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

__all__ = ["write_nifti"]


def write_nifti(path: str | Path, array: np.ndarray, affine_ras: np.ndarray, *, dtype: npt.DTypeLike) -> Path:
    """Write ``array`` (3-D, ``[i, j, k]``) to ``path`` (``.nii`` or ``.nii.gz``) as ``dtype``.

    Example: ``write_nifti("ct.nii.gz", case.image, case.affine_ras(), dtype=np.int16)``. Values are cast
    with :meth:`numpy.ndarray.astype`, so pass a dtype that holds them (int16 for HU, uint8 for labels).
    Raises :class:`ValueError` for a non-3-D array or an affine that is not a finite 4x4 matrix.
    """
    array = np.asarray(array)
    affine = np.asarray(affine_ras, dtype=np.float64)
    if array.ndim != 3:
        raise ValueError(f"array must be 3-D [i, j, k], got shape {array.shape}")
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"affine_ras must be a finite 4x4 matrix, got shape {affine.shape}")
    image = nib.Nifti1Image(np.asarray(array, dtype=dtype), affine)
    header = image.header
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units(xyz="mm")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path
