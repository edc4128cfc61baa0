"""Volume assembly: pixels of a validated stack -> one array with one affine.

Pixels are decoded by pydicom's pixel handlers (every transfer syntax it has a decoder for: JPEG
baseline/lossless, JPEG-LS, JPEG 2000 through pylibjpeg, RLE, Deflated and Big Endian natively) and
always land in native byte order. Uncompressed little-endian slices -- most CT and MR -- skip a second
header parse: the scan recorded where Pixel Data starts, so the slice is one ``readinto``; every
other syntax goes through ``pixel_array``, and the tests check both paths against ``pixel_array``. Rescale slope/intercept are applied per slice; the result stays
integer when every slope and intercept is integral and the rescaled range fits, and is float32
otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medpipe.dicom.geometry import DEFAULT_OPTIONS, AssemblyOptions, StackGeometry
from medpipe.dicom.headers import SliceHeader, dcmread
from medpipe.dicom.resample import resample_to_regular_grid
from medpipe.dicom.scan import ScanResult, Stack, scan, validate_stack
from medpipe.errors import Code

#: LPS <-> RAS (flip the first two axes); its own inverse.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """A 3D image indexed [x, y, z] = [column, row, slice] with its LPS affine."""

    array: np.ndarray
    affine_lps: np.ndarray
    stack_id: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def affine_ras(self) -> np.ndarray:
        return LPS_TO_RAS @ self.affine_lps

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine_lps[:3, :3], axis=0))  # type: ignore[return-value]

    def monai_meta(self, *, ras: bool = True) -> dict[str, Any]:
        """Metadata the way MONAI's readers give it: affine, original_affine, spatial_shape, space."""
        affine = self.affine_ras if ras else self.affine_lps
        meta = dict(self.meta)
        meta.update(
            affine=affine,
            original_affine=affine.copy(),
            spatial_shape=np.asarray(self.array.shape),
            space="RAS" if ras else "LPS",
            original_channel_dim=float("nan"),
        )
        return meta

    def to_metatensor(self):  # -> monai.data.MetaTensor (imported lazily: torch is heavy)
        """The volume as a MONAI MetaTensor (no channel dim) with a RAS affine, like MONAI's readers."""
        import torch
        from monai.data import MetaTensor

        meta = self.monai_meta()
        affine = torch.as_tensor(meta.pop("affine"))
        return MetaTensor(np.ascontiguousarray(self.array), affine=affine, meta=meta)


def _native_dtype(s: SliceHeader) -> np.dtype | None:
    """numpy dtype of an uncompressed little-endian slice, or None to let pydicom decode it."""
    if (
        s.transfer_syntax == "1.2.840.10008.1.2.2"
        or s.bits_allocated not in (8, 16, 32)
        or s.frame is not None
    ):
        return None
    if s.pixel_representation == 1 and s.bits_stored != s.bits_allocated:
        return None  # pydicom sign-extends from BitsStored; do not second-guess it
    return np.dtype(f"<{'i' if s.pixel_representation else 'u'}{s.bits_allocated // 8}")


def _read_native_into(s: SliceHeader, dest: np.ndarray) -> bool:
    """Read an uncompressed slice straight into ``dest`` (C-contiguous, its dtype); False if it does not fit."""
    header = 8 if s.transfer_syntax == "1.2.840.10008.1.2" else 12
    with open(s.path, "rb") as fp:
        fp.seek(s.pixel_offset + header - 4)  # type: ignore[operator]
        length = int(np.frombuffer(fp.read(4), "<u4")[0])
        if length < dest.nbytes:
            return False
        return fp.readinto(memoryview(dest).cast("B")) == dest.nbytes


def _decode_file(path: str) -> np.ndarray:
    ds = dcmread(path)  # also without preamble/"DICM" (the scan already accepted the file)
    arr = ds.pixel_array
    return arr[None] if int(ds.get("NumberOfFrames", 1) or 1) == 1 else arr


def read_stored_pixels(slices: Sequence[SliceHeader], *, threads: int = 2) -> np.ndarray:
    """Stored (not rescaled) pixel values of ``slices``, shape (n, rows, columns), in the given order."""
    first = slices[0]
    out: np.ndarray | None = None
    fallback: list[int] = []
    dtype = _native_dtype(first) if first.is_native else None
    if dtype is not None:
        out = np.empty((len(slices), first.rows, first.columns), dtype)
        for k, s in enumerate(slices):
            native = s.pixel_offset is not None and _native_dtype(s) == dtype
            if not (native and (s.rows, s.columns) == out.shape[1:] and _read_native_into(s, out[k])):
                fallback.append(k)
    else:
        fallback = list(range(len(slices)))
    if fallback:
        by_path: dict[str, list[int]] = {}
        for k in fallback:
            by_path.setdefault(slices[k].path, []).append(k)

        def decode(path: str) -> tuple[str, np.ndarray | Exception]:
            try:
                return path, _decode_file(path)
            except Exception as e:  # truncated or undecodable: reported with a code below
                return path, e

        # Decoded files are placed as they arrive (in order), so only a few are held at once.
        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(by_path)))) as pool:
            for path, arr in pool.map(decode, by_path):
                for k in by_path[path]:
                    s = slices[k]
                    if isinstance(arr, Exception):
                        raise Code.DICOM_CORRUPT_FILE(
                            f"image {k + 1} of {len(slices)} (instance {s.instance_number}) cannot be decoded "
                            f"({type(arr).__name__}: {arr})",
                        ) from arr
                    frame = arr[s.frame or 0]
                    if frame.shape != (s.rows, s.columns):
                        raise Code.DICOM_CORRUPT_FILE(
                            f"image {k + 1} decodes to {frame.shape}, its header says {(s.rows, s.columns)}",
                        )
                    if out is None:
                        # Native byte order: pydicom returns Explicit VR Big Endian pixels as ">u2", and
                        # rescale() reinterprets the buffer in place (a view) -- that byte-swapped every HU.
                        out = np.empty((len(slices), s.rows, s.columns), frame.dtype.newbyteorder("="))
                    elif not np.can_cast(frame.dtype, out.dtype, "safe"):
                        out = out.astype(np.result_type(out.dtype, frame.dtype))
                    out[k] = frame
    return out  # type: ignore[return-value]  # every slice was read by one of the two paths


def rescale(stored: np.ndarray, slices: Sequence[SliceHeader]) -> np.ndarray:
    """Apply each slice's RescaleSlope/Intercept; integer output when exact, else float32.

    ``stored`` may be reused as the output buffer (uint16 CT values below 32768 become int16 in place).
    """
    slopes = np.array([s.slope for s in slices])
    intercepts = np.array([s.intercept for s in slices])
    if (slopes == 1).all() and (intercepts == 0).all():
        return stored
    integral = (slopes == np.round(slopes)).all() and (intercepts == np.round(intercepts)).all()
    if integral and stored.dtype.kind in "iu":
        # The values present decide, not BitsStored: CT stored as uint16/16 bits with intercept -1024 is
        # int16 HU in practice (as SimpleITK and dcm2niix give it), though the declared range is wider.
        lo, hi = int(stored.min()), int(stored.max())
        # Both the scaled values and the final ones must fit (the product is formed before the sum).
        ends = np.concatenate([lo * slopes, hi * slopes, lo * slopes + intercepts, hi * slopes + intercepts])
        for dtype in (np.int16, np.int32):
            info = np.iinfo(dtype)
            if ends.min() >= info.min and ends.max() <= info.max:
                same_width = stored.dtype.itemsize == np.dtype(dtype).itemsize and stored.dtype.isnative
                fits = lo >= info.min and hi <= info.max
                out = stored.view(dtype) if same_width and fits else stored.astype(dtype)
                if not (slopes == 1).all():
                    out *= slopes.astype(dtype)[:, None, None]
                out += intercepts.astype(dtype)[:, None, None]
                return out
    out = stored.astype(np.float32)
    out *= slopes.astype(np.float32)[:, None, None]
    out += intercepts.astype(np.float32)[:, None, None]
    return out


def _meta(stack: Stack, geometry: StackGeometry, array: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    first = stack.slices[0]
    return {
        "series_id": stack.id,
        "modality": first.modality,
        "filename_or_obj": f"dicom-series-{stack.id}",
        "n_slices": len(stack.slices),
        "slice_spacing_mm": float(np.linalg.norm(affine[:3, 2])),  # of the volume returned (resampled or not)
        "gantry_tilt_deg": geometry.tilt_degrees,
        "resampled": geometry.needs_resampling,
        "notes": list(stack.notes),
        "dtype": str(array.dtype),
    }


def load_stack(stack: Stack, options: AssemblyOptions = DEFAULT_OPTIONS) -> Volume:
    """Decode and assemble one stack; raises its coded error if it is not loadable under ``options``."""
    if stack.validated_with != options:
        validate_stack(stack, options)
    if stack.error is not None:
        raise stack.error
    geometry = stack.geometry
    if geometry is None:  # validate_stack sets one of error / geometry
        raise Code.DICOM_INVALID("stack was not validated")
    ordered = [stack.slices[i] for i in geometry.order]
    values = rescale(read_stored_pixels(ordered), ordered)
    if geometry.needs_resampling:
        # As dcm2niix: voxels no slice reaches get PixelPaddingValue (rescaled), else the darkest value,
        # and padding pixels are not blended into their neighbours.
        first = ordered[0]
        padding = None if first.padding_value is None else first.padding_value * first.slope + first.intercept
        resampled, affine = resample_to_regular_grid(
            values.astype(np.float32, copy=False),
            geometry.positions,
            geometry.row_cosine,
            geometry.column_cosine,
            geometry.pixel_spacing,
            correct_tilt=geometry.tilt_degrees > 0,
            equidistant=geometry.irregular_spacing,
            fill_value=float(values.min()) if padding is None else padding,
            padding_value=padding,
        )
        if values.dtype.kind in "iu":  # keep integer HU/intensities, as dcm2niix does
            info = np.iinfo(values.dtype)
            resampled = np.clip(np.rint(resampled), info.min, info.max).astype(values.dtype)
        array = resampled
    else:
        array = values.transpose(2, 1, 0)  # (slice, row, column) -> [x, y, z]
        affine = geometry.affine_lps()
    return Volume(array, affine, stack.id, _meta(stack, geometry, array, affine))


def split_series_ref(path: str) -> tuple[str, str | None]:
    """``'folder#3f2a9c1b07'`` -> (folder, id); a plain path -> (path, None)."""
    head, sep, tail = str(path).rpartition("#")
    if sep and tail and os.path.sep not in tail and os.path.exists(head):
        return head, tail
    return str(path), None


def load_dicom(
    path: str | os.PathLike[str],
    series: str | None = None,
    options: AssemblyOptions = DEFAULT_OPTIONS,
    *,
    scanned: ScanResult | None = None,
) -> Volume:
    """Load one series from a folder (or a multi-frame file); ``series`` picks it by id when several."""
    root, ref = split_series_ref(os.fspath(path))
    series = series or ref
    result = scanned or scan(root, options)
    stack = result.get(series) if series else result.single()
    return load_stack(stack, options)
