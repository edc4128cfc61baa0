"""Read-check and write image and label volumes as NIfTI-1 with an explicit RAS affine.

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

from medpipe.atomic import atomic_path
from medpipe.errors import Code

__all__ = ["validate_nifti", "write_nifti"]


def write_nifti(
    path: str | Path, array: np.ndarray, affine_ras: np.ndarray, *, dtype: npt.DTypeLike | None = None
) -> Path:
    """Write ``array`` (3-D, ``[i, j, k]``) to ``path`` (``.nii`` or ``.nii.gz``) as ``dtype``, atomically.

    Example: ``write_nifti("ct.nii.gz", case.image, case.affine_ras(), dtype=np.int16)``. Values are cast
    with :meth:`numpy.ndarray.astype`, so pass a dtype that holds them (int16 for HU, uint8 for labels);
    ``None`` keeps the array's dtype. Raises :class:`ValueError` for a non-3-D array or an affine that is
    not a finite 4x4 matrix.
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
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return path


def validate_nifti(path: str | Path) -> nib.Nifti1Image:
    """Load a NIfTI and check it can be used as a 3-D volume; coded :class:`NiftiError` otherwise.

    Refused: unreadable or truncated files (NIFTI_UNREADABLE), more than three non-singleton dimensions
    (NIFTI_NOT_3D), qform_code = sform_code = 0, i.e. no orientation in the patient (NIFTI_NO_ORIENTATION),
    a singular or non-finite affine (NIFTI_BAD_AFFINE), NaN or infinite voxels (NIFTI_NONFINITE).
    Returns the image with trailing singleton dimensions dropped.
    """
    name = Path(path).name
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as e:  # nibabel raises many types on a corrupt or truncated file
        raise Code.NIFTI_UNREADABLE(
            f"{name} cannot be read as NIfTI ({type(e).__name__}: {e})"
        ) from e
    shape = data.shape
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise Code.NIFTI_NOT_3D(f"{name} has shape {data.shape}; a 3-D volume is expected")
    header = image.header
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        raise Code.NIFTI_NO_ORIENTATION(
            f"{name} has qform_code = sform_code = 0: its orientation in the patient is unknown",
        )
    affine = image.affine
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise Code.NIFTI_BAD_AFFINE(f"{name} has a singular or non-finite affine")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise Code.NIFTI_NONFINITE(f"{name} holds NaN or infinite voxels")
    return nib.Nifti1Image(data.reshape(shape), affine, header)
