"""Read-check and write image and label volumes as NIfTI-1 with an explicit RAS affine.

medpipe arrays are indexed ``[i, j, k]`` (column, row, slice); NIfTI voxel axes are the same array axes,
so the array is written as is and the affine maps ``(i, j, k)`` to RAS millimetres (for an LPS affine
``A``, pass ``diag(-1, -1, 1, 1) @ A``). Both qform and sform carry the affine (code 1, scanner) so
every reader (nibabel, SimpleITK, ITK-SNAP, MONAI's ``LoadImage``) agrees on the geometry.

A file to read is hostile until checked: its header alone (348 bytes) may claim 65535 x 65535 x 65535
voxels, and nibabel allocates what the header claims before it finds the file short. So the size the
header claims is checked against :data:`MAX_NIFTI_BYTES` and against what the file can hold (its size
past ``vox_offset``; for gzip, :data:`GZIP_MAX_RATIO` times its size) before any voxel is read; each
header extension's claimed size is checked against :data:`MAX_EXTENSION_BYTES` before nibabel reads it.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from medpipe.atomic import atomic_path
from medpipe.errors import Code, NiftiError

__all__ = ["open_nifti", "read_voxels", "validate_nifti", "write_nifti"]

#: Largest voxel data a NIfTI file may claim: 4 GiB (a 512 x 512 x 2048 float32 CT is 2 GiB).
MAX_NIFTI_BYTES = 4 * 2**30
#: Largest dimension: NIfTI-1 stores dimensions as int16 (a NIfTI-2 file may claim more).
MAX_NIFTI_DIM = 32767
#: Deflate cannot expand by more than 1032:1, so a gzip file of n bytes holds at most 1032 n bytes.
GZIP_MAX_RATIO = 1032
#: Largest header extension read (nibabel reads what an extension's size field claims, up to 2 GiB).
MAX_EXTENSION_BYTES = 64 * 2**20
#: Voxel types a volume may have: integers and floats up to 8 bytes (no complex, RGB, float128).
VOXEL_KINDS = "iuf"


def _check_extensions(path: Path, name: str, limit: int) -> None:
    """NIFTI_UNREADABLE / NIFTI_TOO_LARGE for a header extension whose size field nibabel would trust.

    Walks the extension chain as nibabel does (from the 4 bytes after the header to ``vox_offset``), reading
    only each extension's 8-byte size and code; what else is wrong is left to nibabel.
    """
    try:
        with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as f:
            head = f.read(544)
            order = next((o for o in "<>" if len(head) >= 4 and struct.unpack(o + "i", head[:4])[0] in (348, 540)), "")
            size = struct.unpack(order + "i", head[:4])[0] if order else 0
            if not order or len(head) < size + 4 or head[size] == 0:
                return  # not NIfTI (nibabel says so), or no extension
            vox_offset = struct.unpack(order + ("f" if size == 348 else "q"), head[108:112] if size == 348 else head[168:176])[0]
            f.seek(size + 4)
            remaining = vox_offset - (size + 4)
            while remaining >= 16 or remaining < 0:  # nibabel's loop (NaN: no extension read)
                code = f.read(8)
                if len(code) < 8:
                    return
                esize = struct.unpack(order + "i", code[:4])[0]
                if esize < 16:
                    raise Code.NIFTI_UNREADABLE(f"{name} has a header extension of {esize} bytes (at least 16)")
                if esize > limit:
                    raise Code.NIFTI_TOO_LARGE(
                        f"{name} has a header extension of {esize} bytes; at most {limit} are read",
                    )
                f.seek(esize - 8, 1)
                remaining -= esize
    except (OSError, EOFError, zlib.error):
        return  # a corrupt or truncated stream: nibabel's error names it


def _check_claimed_size(name: str, image: nib.Nifti1Pair, max_bytes: int) -> None:
    """NIFTI_TOO_LARGE / NIFTI_UNREADABLE from the header alone, before any voxel is allocated."""
    header = image.header
    shape = tuple(int(n) for n in header.get_data_shape())
    dtype = header.get_data_dtype()
    claimed = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if claimed > max_bytes or any(n > MAX_NIFTI_DIM for n in shape):
        raise Code.NIFTI_TOO_LARGE(
            f"{name} claims {' x '.join(map(str, shape))} voxels of {dtype.itemsize} bytes ({claimed / 2**30:.3g} GiB); "
            f"at most {max_bytes / 2**30:.3g} GiB and {MAX_NIFTI_DIM} per dimension are read",
        )
    if dtype.kind not in VOXEL_KINDS or dtype.itemsize > 8:
        raise Code.NIFTI_INVALID(f"{name} stores voxels as {dtype}; a volume needs integer or float voxels")
    data_file = image.file_map["image"].filename or ""
    offset = int(header.get_data_offset())
    size = Path(data_file).stat().st_size
    suffix = Path(data_file).suffix.lower()
    if suffix == ".gz":
        room = GZIP_MAX_RATIO * size
    elif suffix in (".bz2", ".zst"):  # no such bound; MAX_NIFTI_BYTES still holds
        room = claimed + offset
    else:
        room = size
    if claimed + offset > room:
        raise Code.NIFTI_UNREADABLE(
            f"{name} is truncated: its header claims {claimed} bytes of voxels from byte {offset} but the file "
            f"is {size} bytes{' compressed' if suffix == '.gz' else ''}",
        )


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


def open_nifti(path: str | Path, *, max_bytes: int | None = None) -> nib.Nifti1Pair:
    """nibabel's lazy image of a NIfTI file whose header (and extensions) was checked against the file and
    the bounds, no voxel read: NIFTI_UNREADABLE, NIFTI_TOO_LARGE or NIFTI_INVALID otherwise. The one way
    medpipe opens a NIfTI it did not write (labels too: :mod:`medpipe.data.checks`)."""
    name = Path(path).name
    limit = MAX_NIFTI_BYTES if max_bytes is None else max_bytes
    _check_extensions(Path(path), name, min(MAX_EXTENSION_BYTES, limit))
    try:
        image = nib.load(str(path))
        if not isinstance(image, nib.Nifti1Pair):  # also Nifti1Image, Nifti2Image
            raise TypeError(f"a {type(image).__name__} file, not NIfTI")
        _check_claimed_size(name, image, limit)
    except NiftiError:
        raise
    except Exception as e:  # nibabel raises many types on a corrupt or truncated file
        raise Code.NIFTI_UNREADABLE(f"{name} cannot be read as NIfTI ({type(e).__name__}: {str(e)[:200]})") from e
    return image


def read_voxels(image: nib.Nifti1Pair, name: str) -> np.ndarray:
    """The voxels of an :func:`open_nifti` image (scaled); NIFTI_UNREADABLE if the data is corrupt."""
    try:
        return np.asanyarray(image.dataobj)
    except Exception as e:  # truncated gzip stream, short file...
        raise Code.NIFTI_UNREADABLE(f"{name} cannot be read as NIfTI ({type(e).__name__}: {str(e)[:200]})") from e


def validate_nifti(path: str | Path, *, max_bytes: int | None = None) -> nib.Nifti1Image:
    """Load a NIfTI and check it can be used as a 3-D volume; coded :class:`NiftiError` otherwise.

    Refused: unreadable or truncated files (NIFTI_UNREADABLE), more than three non-singleton dimensions
    (NIFTI_NOT_3D), qform_code = sform_code = 0, i.e. no orientation in the patient (NIFTI_NO_ORIENTATION),
    a singular or non-finite affine (NIFTI_BAD_AFFINE), NaN or infinite voxels (NIFTI_NONFINITE), a header
    claiming more than ``max_bytes`` (default :data:`MAX_NIFTI_BYTES`) of voxels or a dimension over 32767 (NIFTI_TOO_LARGE, before reading),
    voxels that are not integers or floats, an empty dimension (NIFTI_INVALID).
    Returns the image with trailing singleton dimensions dropped.
    """
    name = Path(path).name
    image = open_nifti(path, max_bytes=max_bytes)
    data = read_voxels(image, name)
    if data.dtype.kind not in VOXEL_KINDS:  # scaling made them something else
        raise Code.NIFTI_INVALID(f"{name} holds {data.dtype} voxels; a volume needs integer or float voxels")
    if 0 in data.shape:
        raise Code.NIFTI_INVALID(f"{name} has shape {data.shape}: an empty dimension, no voxel to use")
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
    return type(image)(data.reshape(shape), affine, header)  # a NIfTI-2 header stays NIfTI-2
