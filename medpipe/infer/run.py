"""``medpipe infer``: a segmentation bundle over every series of a DICOM tree or NIfTI folder, nothing lost.

Per series (one at a time; nothing of a series stays in memory once it is written):
load (``medpipe.dicom`` / validated NIfTI) -> the bundle's own ``preprocessing`` (minus its loader),
``inferer`` + ``network`` (weights ``models/model.pt``, weights-only) and ``postprocessing`` (minus its
SaveImage; its ``Invertd`` maps the prediction back to the input grid) -> outputs in ``OUT/<id>/``:

- ``<id>_seg.nii.gz``: the label mask, on exactly the grid ``medpipe convert`` writes for the series;
- ``<id>_seg.dcm``: a DICOM Segmentation referencing the source instances (DICOM inputs only);
- ``<id>_lesions.csv``: connected components with volume, diameter, centroid, mean intensity
  (+ ``--classifier`` probability);
- ``<id>_preview.png``; and last, ``done.json``, the record that makes a re-run skip the series.

Every file is written under a temporary name and renamed. ``done.json`` holds the bundle name, version
and weights hash, the input fingerprint, the options that change outputs, and the series' result and
lesion rows; a re-run skips a series whose record matches and whose outputs exist, and processes
the rest. A series that fails with a coded error, an unselected modality or out-of-memory gets a
failures.csv row and the run goes on; anything else is a bug and stops the run (finished series keep
their records, so the re-run resumes).

Run level, in OUT: ``results.csv`` (one row per series), ``lesions.csv``, ``failures.csv``
(series, code, message) and ``summary.json``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medpipe import __version__
from medpipe.atomic import atomic_write_text
from medpipe.bundle.layout import BundleLayout
from medpipe.dicom.geometry import DEFAULT_OPTIONS, AssemblyOptions
from medpipe.errors import Code, MedpipeError, look_up
from medpipe.infer.sources import Loaded, Source, discover, file_sha256, parse_select, refuse_unselected

FORMATS = ("nifti", "dicom-seg")
RESULT_FIELDS = (
    "series", "kind", "modality", "status", "shape", "spacing_mm", "lesions", "lesion_volume_mm3",
    "seconds", "peak_rss_mb", "mask", "seg", "preview", "note",
)  # fmt: skip
LESION_FIELDS = (
    "series", "label", "label_name", "lesion", "voxels", "volume_mm3", "diameter_mm",
    "centroid_lps_x", "centroid_lps_y", "centroid_lps_z", "mean_intensity", "intensity_unit",
    "classifier_probability",
)  # fmt: skip
FAILURE_FIELDS = ("series", "code", "message")
DONE = "done.json"


def release_memory() -> None:
    """Return freed heap memory to the OS between series (glibc ``malloc_trim``; a no-op elsewhere).

    numpy and torch free a series' large buffers, but glibc keeps freed heap pages (its mmap threshold
    rises after the first large frees), so without this the resident size crept up by ~25 MB per
    series (measured over 12 series, see docs/benchmarks.md).
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class SegModel:
    """The bundle's inference components, built once per run."""

    name: str
    version: str
    folder: str
    model_sha256: str
    names: dict[int, str]
    modality: str | None
    preprocessing: Any
    network: Any
    inferer: Any
    post: list[Any]
    device: Any
    window: tuple[float, float]
    #: voxels of the original grid resampled at once by :func:`invert_in_slabs` (bounds its memory)
    slab_voxels: int = 4_000_000

    def lean_split(self) -> tuple[list[Any], list[Any]] | None:
        """(before, after) the bundle's ``Invertd`` when the post-processing is voxel-wise around it.

        Then the inversion is done in slabs of the original grid (:func:`invert_in_slabs`) instead of
        by ``Invertd`` on the whole volume at once, whose sampling grid alone takes 16 bytes per voxel.
        ``None`` (use the bundle's post-processing as it is) for any other post-processing.
        """
        from monai.transforms import Activationsd, AsDiscreted, Invertd

        inverts = [i for i, t in enumerate(self.post) if isinstance(t, Invertd)]
        if len(inverts) != 1 or not all(
            isinstance(t, (Activationsd, AsDiscreted, Invertd)) for t in self.post
        ):
            return None
        inv = self.post[inverts[0]]
        if list(inv.keys) != ["pred"] or list(inv.orig_keys) != ["image"]:
            return None
        return self.post[: inverts[0]], self.post[inverts[0] + 1 :]

    @classmethod
    def open(cls, bundle: str | Path, overrides: Mapping[str, Any], user_ids: Sequence[str]) -> SegModel:
        from monai.transforms import Compose, LoadImage, LoadImaged, SaveImage, SaveImaged

        from medpipe.bundle.export import load_state_dict
        from medpipe.bundle.workflow import build_workflow, parsed

        layout = BundleLayout.open(bundle)
        if not layout.model_pt.is_file():
            raise Code.BUNDLE_NO_WEIGHTS(
                f"{layout.model_pt} does not exist: train the bundle first (medpipe train --bundle {layout.root})",
            )
        wf = build_workflow(layout, "inference", dict(overrides), user_ids=user_ids)
        meta = json.loads(layout.metadata.read_text())
        fmt = meta.get("network_data_format", {})
        channel_def = fmt.get("outputs", {}).get("pred", {}).get("channel_def") or {}
        num_classes = int(parsed(wf, "num_classes")) if "num_classes" in wf.parser else len(channel_def)
        names = {c: str(channel_def.get(str(c), f"class{c}")) for c in range(num_classes)}
        modality = fmt.get("inputs", {}).get("image", {}).get("modality")
        # The bundle's loader reads files; here the series is already in memory as a MetaTensor.
        full = parsed(wf, "preprocessing")
        steps = [t for t in full.flatten().transforms if not isinstance(t, (LoadImaged, LoadImage))]
        _resample_in_float32(steps)
        network = parsed(wf, "network")
        network.load_state_dict(load_state_dict(layout.model_pt))
        network.eval()
        post = [
            t for t in parsed(wf, "postprocessing").transforms if not isinstance(t, (SaveImaged, SaveImage))
        ]
        window = parsed(wf, "hu_window") if "hu_window" in wf.parser else (-1000.0, 400.0)
        return cls(
            name=str(meta.get("name", layout.root.name)),
            version=str(meta.get("version", "unknown")),
            folder=layout.root.name,
            model_sha256=file_sha256(layout.model_pt),
            names=names,
            modality=str(modality).upper() if modality else None,
            preprocessing=Compose(steps),
            network=network,
            inferer=parsed(wf, "inferer"),
            post=post,
            device=parsed(wf, "device"),
            window=(float(window[0]), float(window[1])),
        )

    def predict(self, loaded: Loaded, series_id: str) -> np.ndarray:
        """Label mask (uint8, [i, j, k]) on the grid of ``loaded``."""
        import torch
        from monai.data import MetaTensor

        shape = tuple(loaded.array.shape)
        affine = loaded.affine_ras
        image = MetaTensor(
            torch.from_numpy(np.asarray(loaded.array, dtype=np.float32)),  # as LoadImage: float32
            affine=torch.as_tensor(affine),
            meta={
                "original_affine": affine.copy(),
                "spatial_shape": np.asarray(shape),
                "space": "RAS",
                "original_channel_dim": float("nan"),
                "filename_or_obj": f"series-{series_id}",
            },
        )
        data = self.preprocessing({"image": image})
        del image
        with torch.no_grad():
            logits = self.inferer(data["image"][None].to(self.device), self.network)
        data["pred"] = logits[0].cpu()
        del logits
        split = self.lean_split()
        if split is None:
            for transform in self.post:  # the bundle's own post-processing, minus saving
                data = transform(data)
            mask = _to_mask(data.pop("pred"))
        else:
            before, after = split
            for transform in before:  # e.g. Activationsd, on the (small) preprocessed grid
                data = transform(data)
            mask = invert_in_slabs(data["pred"], data["image"].affine, affine, shape, after, self.slab_voxels)
        del data
        if mask.shape != shape:
            raise Code.BUNDLE_GRID_MISMATCH(
                f"series {series_id}: the bundle's post-processing gives {mask.shape}, the input is {shape}; "
                "its inference postprocessing must invert the preprocessing (Invertd)",
            )
        return mask


def _resample_in_float32(transforms: Sequence[Any]) -> None:
    """Make ``Spacingd`` steps that resample in float64 (MONAI's default) resample in float32.

    MONAI converts the whole volume *and* its sampling grid to the ``dtype`` of ``Spacingd``: in float64
    that alone is about 2 GB for a 512x512x400 CT. float32 interpolation of images stored as 16-bit
    integers changes values by less than 1e-4 HU, and halves the peak memory of ``medpipe infer``.
    """
    import torch
    from monai.transforms import Spacingd

    for t in transforms:
        if isinstance(t, Spacingd):
            t.dtype = tuple(np.float32 if d in (np.float64, torch.float64, "float64") else d for d in t.dtype)


def _to_mask(pred: Any) -> np.ndarray:
    if pred.shape[0] != 1:  # post-processing left probabilities: take the class
        pred = pred.argmax(dim=0, keepdim=True)
    return np.asarray(pred[0].detach().cpu().numpy()).astype(np.uint8)


def invert_in_slabs(
    pred: Any,
    pred_affine: Any,
    affine_ras: np.ndarray,
    shape: tuple[int, ...],
    after: Sequence[Any],
    slab_voxels: int = 4_000_000,
) -> np.ndarray:
    """Resample ``pred`` (C, X', Y', Z', on ``pred_affine``) onto the original grid, slab by slab along k.

    Equivalent to the bundle's ``Invertd`` (which undoes Orientation, Spacing and crops through the
    same affines): each original voxel's centre is mapped through ``inv(pred_affine) @ affine_ras``
    and ``pred`` is sampled there trilinearly; outside ``pred`` every channel is 0 (as the inverse of a
    crop pads), so the class is background. The bundle's transforms after ``Invertd`` (argmax...) are
    then applied to each slab, and the result kept as uint8. Memory: about 40 bytes per slab voxel.
    """
    import torch
    from monai.data import MetaTensor

    mapping = torch.as_tensor(np.linalg.inv(np.asarray(pred_affine, dtype=np.float64)) @ affine_ras)
    src = torch.as_tensor(pred).float()[None]  # (1, C, X', Y', Z')
    size = torch.tensor(src.shape[2:], dtype=torch.float64)
    nx, ny, nz = shape
    mask = np.zeros(shape, dtype=np.uint8)
    step = max(1, slab_voxels // (nx * ny))
    ii, jj = torch.meshgrid(
        torch.arange(nx, dtype=torch.float64), torch.arange(ny, dtype=torch.float64), indexing="ij"
    )
    for k0 in range(0, nz, step):
        k1 = min(nz, k0 + step)
        kk = torch.arange(k0, k1, dtype=torch.float64)
        # voxel (i, j, k) -> index in pred; grid_sample wants (k', j', i') normalised to [-1, 1]
        idx = [
            mapping[r, 0] * ii[..., None] + mapping[r, 1] * jj[..., None] + mapping[r, 2] * kk + mapping[r, 3]
            for r in range(3)
        ]
        grid = torch.stack(
            [(2 * idx[r] / (size[r] - 1).clamp(min=1) - 1).float() for r in (2, 1, 0)], dim=-1
        )  # (X, Y, K, 3): output laid out as [i, j, k]
        del idx
        slab = torch.nn.functional.grid_sample(
            src, grid[None], mode="bilinear", padding_mode="zeros", align_corners=True
        )[0]  # (C, X, Y, K)
        del grid
        data = {"pred": MetaTensor(slab)}
        for transform in after:  # the bundle's own (AsDiscreted argmax...), voxel-wise
            data = transform(data)
        mask[:, :, k0:k1] = _to_mask(data["pred"])
    return mask


def _csv(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in fields})
    return buf.getvalue()


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if not np.isfinite(value) else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "x".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
    return "" if value is None else value


def _scrub(message: str, source: Source) -> str:
    """Remove folder and file names (they may name the patient) from an error message."""
    paths: set[str] = set()
    if source.path is not None:
        paths |= {str(source.path.resolve()), str(source.path), source.path.name}
    if source.stack is not None:
        for s in source.stack.slices:
            paths |= {s.path, os.path.dirname(s.path)}
    for p in sorted((p for p in paths if p), key=len, reverse=True):
        message = message.replace(p, f"<series {source.id}>")
    return message


def _oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def infer(
    bundle: str | Path,
    input_path: str | Path,
    output: str | Path,
    *,
    classifier: str | Path | None = None,
    formats: Sequence[str] = FORMATS,
    select: Sequence[str] = (),
    workers: int | None = None,
    device: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    user_ids: Sequence[str] = (),
    options: AssemblyOptions = DEFAULT_OPTIONS,
    echo: Callable[[str], None] = print,
    progress: bool = True,
    after_series: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Run ``bundle`` on every series of ``input_path``; see the module docstring. Returns summary.json."""
    import torch
    from tqdm import tqdm

    from medpipe.bundle.workflow import device_expression

    formats = tuple(dict.fromkeys(f.strip().lower() for f in formats if f.strip()))
    for f in formats:
        look_up(f, FORMATS, what="--format", code=Code.INFER_BAD_FORMAT)
    selected = parse_select(tuple(select))
    out = Path(output)
    if out.resolve().is_relative_to(Path(input_path).resolve()) and Path(input_path).is_dir():
        raise Code.INFER_OUTPUT_INSIDE_INPUT(
            f"--output {out} is inside --input {input_path}: a re-run would take the outputs for inputs; "
            "choose an output folder outside the input tree",
        )
    if workers:
        torch.set_num_threads(int(workers))
    overrides = dict(overrides or {})
    if device is not None:
        overrides["device"] = device_expression(device)
    model = SegModel.open(bundle, overrides, user_ids)
    if not selected and model.modality:
        selected = {"modality": {model.modality}}
    clf = None
    if classifier is not None:
        from medpipe.infer.classifier import Classifier

        clf = Classifier.open(classifier, model.device)
    found = discover(input_path, options, workers=workers)
    for source in found.sources:
        refuse_unselected(source, selected)
    out.mkdir(parents=True, exist_ok=True)
    record_base = {
        "bundle": model.name,
        "bundle_folder": model.folder,
        "bundle_version": model.version,
        "model_sha256": model.model_sha256,
        "formats": sorted(formats),
        "overrides": {k: str(v) for k, v in sorted(overrides.items()) if k != "device"},
        "classifier": None if clf is None else [clf.name, clf.version, clf.model_sha256],
    }
    echo(
        f"infer {model.folder} {model.version} on {len(found.sources)} series "
        f"({', '.join(sorted(selected.get('modality', []))) or 'any modality'}) on {model.device}"
    )
    results: list[dict[str, Any]] = []
    lesions: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = [
        {"series": fid, "code": code, "message": "file cannot be read as DICOM: " + msg.split(": ", 1)[-1]}
        for fid, code, msg in found.unreadable
    ]
    counts = {"done": 0, "skipped": 0, "failed": 0}
    start = time.perf_counter()

    def write_reports() -> dict[str, Any]:
        summary = {
            "medpipe": __version__,
            **{k: v for k, v in record_base.items() if k != "overrides"},
            "series": len(found.sources),
            **counts,
            "unreadable_files": len(found.unreadable),
            "lesions": len(lesions),
            "seconds": round(time.perf_counter() - start, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "failures": sorted({f["code"] for f in failures}),
        }
        atomic_write_text(out / "results.csv", _csv(results, RESULT_FIELDS))
        atomic_write_text(out / "lesions.csv", _csv(lesions, LESION_FIELDS))
        atomic_write_text(out / "failures.csv", _csv(failures, FAILURE_FIELDS))
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
        return summary

    def finish(series: str, status: str) -> None:
        release_memory()  # nothing of this series is referenced any more
        if after_series:
            after_series(series, status)

    try:
        bar = tqdm(found.sources, desc="infer", unit="series", disable=not progress, leave=False)
        for source in bar:
            bar.set_postfix_str(source.id)
            folder = out / source.id
            record = {**record_base, "series": source.id, "fingerprint": source.fingerprint}
            previous = _read_done(folder)
            if previous is not None and previous.get("record") == record and _outputs_exist(folder, previous):
                results.append({**previous["result"], "status": "ok", "note": "done earlier (skipped)"})
                lesions += previous["lesions"]
                counts["skipped"] += 1
                finish(source.id, "skipped")
                continue
            t0 = time.perf_counter()
            (folder / DONE).unlink(missing_ok=True)  # a stale record must not vouch for new, partial outputs
            try:
                if source.error is not None:
                    raise source.error
                result, rows = _process(source, model, clf, formats, folder)
            except Exception as exc:  # noqa: BLE001 - coded and out-of-memory errors are recorded; others re-raised
                if isinstance(exc, MedpipeError):
                    code, message = exc.code, exc.message
                elif _oom(exc):
                    code, message = (
                        Code.INFER_OUT_OF_MEMORY,
                        f"out of memory ({type(exc).__name__}: {str(exc)[:200]})",
                    )
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                else:
                    raise
                shutil.rmtree(folder, ignore_errors=True)  # no half set of outputs for a failed series
                message = _scrub(message, source)
                failures.append({"series": source.id, "code": code, "message": message})
                results.append(
                    {"series": source.id, "kind": source.kind, "modality": source.modality, "status": code,
                     "seconds": round(time.perf_counter() - t0, 2), "note": message}
                )  # fmt: skip
                counts["failed"] += 1
                echo(f"{source.id}: {code}: {message}")
                finish(source.id, code)
                continue
            result["seconds"] = round(time.perf_counter() - t0, 2)
            result["peak_rss_mb"] = round(peak_rss_mb(), 1)
            atomic_write_text(
                folder / DONE,
                json.dumps({"record": record, "result": result, "lesions": rows}, indent=1) + "\n",
            )
            results.append(result)
            lesions += rows
            counts["done"] += 1
            echo(f"{source.id}: {result['lesions']} lesion(s), {result['seconds']:.1f} s")
            finish(source.id, "ok")
    finally:
        summary = write_reports()
    echo(
        f"{counts['done']} done, {counts['skipped']} skipped (done earlier), {counts['failed']} failed "
        f"in {summary['seconds']:.0f} s; reports in {out} (results.csv, lesions.csv, failures.csv, summary.json)"
    )
    return summary


def _read_done(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / DONE).read_text())
    except (OSError, ValueError):
        return None


def _outputs_exist(folder: Path, done: Mapping[str, Any]) -> bool:
    result = done.get("result", {})
    names = [result.get(k) for k in ("mask", "seg", "preview")] + [result.get("lesion_table")]
    return all((folder / n).is_file() for n in names if n)


def _process(
    source: Source, model: SegModel, clf: Any, formats: Sequence[str], folder: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from medpipe.data.nifti import write_nifti
    from medpipe.infer.lesions import measure_lesions
    from medpipe.infer.preview import write_preview

    loaded = source.load()
    mask = model.predict(loaded, source.id)
    notes: list[str] = []
    sid = source.id
    result: dict[str, Any] = {
        "series": sid,
        "kind": source.kind,
        "modality": source.modality,
        "status": "ok",
        "shape": list(loaded.array.shape),
        "spacing_mm": [float(v) for v in np.linalg.norm(loaded.affine_lps[:3, :3], axis=0)],
    }
    if "nifti" in formats:
        write_nifti(folder / f"{sid}_seg.nii.gz", mask, loaded.affine_ras, dtype=np.uint8)
        result["mask"] = f"{sid}_seg.nii.gz"
    if "dicom-seg" in formats:
        if source.kind != "dicom":
            notes.append("no DICOM SEG for a NIfTI input")
        elif loaded.resampled:
            notes.append(
                "no DICOM SEG: the series was resampled (tilt/gaps), so the mask does not follow its slices"
            )
        else:
            from medpipe.infer.seg import write_seg

            write_seg(
                folder / f"{sid}_seg.dcm", mask, source.stack,  # type: ignore[arg-type]
                model.names, bundle_name=model.name, bundle_version=model.version,
            )  # fmt: skip
            result["seg"] = f"{sid}_seg.dcm"
    found = measure_lesions(mask, loaded.affine_lps, loaded.array, model.names)
    unit = "HU" if source.modality == "CT" else ""
    pad = -1024.0 if source.modality == "CT" else float(np.min(loaded.array))
    rows = []
    for lesion in found:
        row: dict[str, Any] = {"series": sid, **lesion.row(), "intensity_unit": unit}
        if clf is not None:
            centre_ras = lesion.centroid_lps * np.array([-1.0, -1.0, 1.0])
            row["classifier_probability"] = clf.probability(loaded.array, loaded.affine_ras, centre_ras, pad)
        rows.append(row)
    result["lesions"] = len(rows)
    result["lesion_volume_mm3"] = float(sum(r["volume_mm3"] for r in rows))
    result["lesion_table"] = f"{sid}_lesions.csv"
    atomic_write_text(folder / result["lesion_table"], _csv(rows, LESION_FIELDS))
    write_preview(
        folder / f"{sid}_preview.png", loaded.array, mask, found,
        title=f"series {sid}: {len(found)} lesion(s), {model.folder} {model.version}",
        modality=source.modality, window=model.window,
    )  # fmt: skip
    result["preview"] = f"{sid}_preview.png"
    if clf is not None:
        notes.append(f"classifier_probability = P({clf.positive}) from {clf.name} {clf.version}")
    result["note"] = "; ".join(notes)
    return result, rows
