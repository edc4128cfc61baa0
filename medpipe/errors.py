"""Errors with stable codes, and the one registry of every code.

Every mistake a user can make, or bad input a pipeline can meet, raises a :class:`MedpipeError`
subclass carrying a stable ``code``. The codes are the members of :class:`Code`, each with the
exception class it raises and a one-line meaning; nothing else defines a code. A raise site reads::

    raise Code.MANIFEST_NOT_FOUND(f"manifest file {p} does not exist; pass --manifest ...")

which builds the code's registered exception class (here :class:`ManifestError`) with that message.
The CLI prints ``CODE: message`` on one line and exits with :data:`EXIT_INPUT_ERROR`; batch commands
record the code per item and go on. The exception classes also inherit the natural built-in
(``ValueError``...) so generic handlers keep working. ``python -m medpipe.errors`` prints the
registry as the Markdown table of ``docs/errors.md``.

Choice options go through :func:`look_up`, which names the closest valid values (MONAI's ``look_up_option``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from enum import Enum

#: Exit status of the CLI when a :class:`MedpipeError` stopped the command (bad input or config).
EXIT_INPUT_ERROR = 3
#: Exit status of a batch command that finished but recorded coded failures for some items.
EXIT_PARTIAL = 4


class MedpipeError(Exception):
    """Base class: ``code`` is stable and machine-readable, the message says what and how to fix."""

    def __init__(self, message: str, *, code: Code | str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = Code(code)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class BundleError(MedpipeError, ValueError):
    """A bundle folder, its configs, its weights or an override is unusable."""


class ManifestError(MedpipeError, ValueError):
    """A datalist (manifest) is missing or malformed, or the cases it names are unusable."""


class InputError(MedpipeError, ValueError):
    """An input a command was given (a path, an image, an option value) cannot be used."""


class NiftiError(InputError):
    """A NIfTI file that cannot be used as a volume."""


class DicomError(InputError):
    """A DICOM object or series cannot be used as asked."""


class DataGenerationError(MedpipeError, RuntimeError):
    """Embedded synthetic data could not be generated (bad parameters, disk full)."""


class Code(str, Enum):
    """Every error code medpipe raises or records: ``Code.X(message)`` builds its exception.

    Each member is ``NAME = "NAME", exception class, "one-line meaning"``.
    """

    error: type[MedpipeError]
    meaning: str

    def __new__(cls, value: str, error: type[MedpipeError], meaning: str) -> Code:
        member = str.__new__(cls, value)
        member._value_ = value
        member.error = error
        member.meaning = meaning
        return member

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    def __call__(self, message: str) -> MedpipeError:
        """The registered exception for this code with ``message`` (to ``raise``, or to record)."""
        return self.error(message, code=self)

    # --- generic
    MEDPIPE_ERROR = "MEDPIPE_ERROR", MedpipeError, "an error without a more specific code"
    # --- bundles: folder, configs, overrides, weights
    BUNDLE_INVALID = "BUNDLE_INVALID", BundleError, "a bundle is unusable (no more specific code)"
    BUNDLE_NOT_FOUND = "BUNDLE_NOT_FOUND", BundleError, "--bundle is not a folder"
    BUNDLE_NO_CONFIGS = "BUNDLE_NO_CONFIGS", BundleError, "the bundle folder has no configs/*.json or *.yaml"
    BUNDLE_MISSING_CONFIG = (
        "BUNDLE_MISSING_CONFIG", BundleError, "a config the command needs (e.g. train.json) is absent"
    )
    BUNDLE_UNTRUSTED = (
        "BUNDLE_UNTRUSTED", BundleError,
        "a bundle from elsewhere whose configs would run code ($ expressions, _target_ outside monai./medpipe./"
        "torch./ignite., imports, scripts/) that nobody trusted: medpipe trust DIR, or --trust-bundle",
    )  # fmt: skip
    BUNDLE_WEIGHTS_TAMPERED = (
        "BUNDLE_WEIGHTS_TAMPERED", BundleError,
        "the shipped models/ weights differ from the sha256 recorded in the bundle's metadata.json",
    )  # fmt: skip
    BUNDLE_MISSING_PROPERTIES = (
        "BUNDLE_MISSING_PROPERTIES", BundleError,
        "config ids MONAI's bundle specification requires are absent (monai.bundle.properties)",
    )  # fmt: skip
    BUNDLE_NO_WEIGHTS = (
        "BUNDLE_NO_WEIGHTS", BundleError,
        "the weights to use (models/model.pt or --weights) do not exist: train, or pass --weights",
    )  # fmt: skip
    BUNDLE_NET_IO_MISMATCH = (
        "BUNDLE_NET_IO_MISMATCH", BundleError,
        "MONAI's verify_net_in_out failed: the network does not match metadata.json",
    )  # fmt: skip
    BACKEND_BAD_OPTION = "BACKEND_BAD_OPTION", InputError, "--backend / --precision: unknown, or not for this backend"
    BACKEND_UNAVAILABLE = "BACKEND_UNAVAILABLE", InputError, "--backend's package (onnxruntime, openvino) is not installed"
    BACKEND_FAILED = "BACKEND_FAILED", BundleError, "ONNX Runtime or OpenVINO cannot load the exported network"
    BACKEND_MISMATCH = "BACKEND_MISMATCH", BundleError, "the exported network does not give the eager logits"
    BUNDLE_CROP_SIZE_INVALID = (
        "BUNDLE_CROP_SIZE_INVALID", BundleError,
        "crop_size is not 3 positive integers, or the network cannot take such a crop or does not return one "
        "score per class",
    )  # fmt: skip
    BUNDLE_NOT_A_RUN = (
        "BUNDLE_NOT_A_RUN", BundleError,
        "promote: the folder is not a finished training run of this bundle (no model.pt / run.json)",
    )  # fmt: skip
    BUNDLE_VERSION_INVALID = (
        "BUNDLE_VERSION_INVALID", BundleError,
        "promote: the new version is not MAJOR.MINOR.PATCH greater than the bundle's version",
    )  # fmt: skip
    CHECKPOINT_UNREADABLE = (
        "CHECKPOINT_UNREADABLE", BundleError, "a checkpoint is not a weights-only state dict of tensors"
    )
    CHECKPOINT_MISMATCH = (
        "CHECKPOINT_MISMATCH", BundleError, "the weights do not fit the bundle's network_def (first mismatch named)"
    )
    CONFIG_UNKNOWN_ID = "CONFIG_UNKNOWN_ID", BundleError, "--set names a config id that does not exist"
    CONFIG_BAD_OVERRIDE = (
        "CONFIG_BAD_OVERRIDE", BundleError, "--set is not ID=VALUE, or an option value is out of range"
    )
    CONFIG_INVALID = (
        "CONFIG_INVALID", BundleError, "a config component cannot be built (the component and cause are named)"
    )
    DEVICE_UNAVAILABLE = "DEVICE_UNAVAILABLE", BundleError, "--device cuda on a machine where torch sees no GPU"
    DEVICE_INVALID = "DEVICE_INVALID", BundleError, "--device is not cpu, cuda or cuda:N"
    TRAIN_RESUME_INVALID = (
        "TRAIN_RESUME_INVALID", BundleError,
        "train --resume: the run folder has no (readable) checkpoint, or it is of another bundle version or "
        "does not fit the training",
    )  # fmt: skip
    TRAIN_BAD_NPROC = (
        "TRAIN_BAD_NPROC", BundleError,
        "train --nproc: fewer than 2, more than the CPU cores (or GPUs with --device cuda), or a bundle "
        "without configs/multi_gpu.json",
    )  # fmt: skip
    TRAIN_DISTRIBUTED_FAILED = (
        "TRAIN_DISTRIBUTED_FAILED", BundleError,
        "train under torchrun: a process of the run failed or the processes could not meet (rendezvous)",
    )  # fmt: skip
    TRAIN_TRACKING_UNAVAILABLE = (
        "TRAIN_TRACKING_UNAVAILABLE", BundleError,
        "train --tracking: a tracker other than mlflow, or mlflow is not installed (medpipe[tracking])",
    )  # fmt: skip
    INIT_SOURCE_NOT_FOUND = (
        "INIT_SOURCE_NOT_FOUND", BundleError,
        "train --init-from: no such file, or a bundle folder without models/model.pt",
    )  # fmt: skip
    INIT_NO_MATCHING_LAYERS = (
        "INIT_NO_MATCHING_LAYERS", BundleError,
        "train --init-from: no tensor of the source matches a layer by name and shape",
    )  # fmt: skip
    FREEZE_INVALID = "FREEZE_INVALID", BundleError, "--freeze is not none, backbone or until:LAYER"
    FREEZE_UNKNOWN_LAYER = (
        "FREEZE_UNKNOWN_LAYER", BundleError, "--freeze until:LAYER names no layer of the network (closest named)"
    )
    EXPLAIN_UNKNOWN_LAYER = (
        "EXPLAIN_UNKNOWN_LAYER", BundleError,
        "explain --target-layer names no module (closest named), or no layer yields a feature map",
    )  # fmt: skip
    EXPLAIN_NOT_CLASSIFIER = (
        "EXPLAIN_NOT_CLASSIFIER", BundleError, "explain on a bundle whose network does not output one score per class"
    )
    EXPLAIN_NOT_INVERTIBLE = (
        "EXPLAIN_NOT_INVERTIBLE", BundleError, "the bundle's preprocessing cannot be inverted onto the input grid"
    )
    BUNDLE_GRID_MISMATCH = (
        "BUNDLE_GRID_MISMATCH", BundleError,
        "the bundle's inference postprocessing does not return the prediction on the input grid (add Invertd)",
    )  # fmt: skip
    BUNDLE_NOT_SEGMENTER = (
        "BUNDLE_NOT_SEGMENTER", BundleError,
        "a segmentation command (infer, segmentation evaluate) on a bundle that outputs class probabilities",
    )  # fmt: skip
    BUNDLE_NOT_LESION = (
        "BUNDLE_NOT_LESION", BundleError,
        "an option for lesion bundles (evaluate --choose-operating-point / --classifier) on a bundle whose "
        "inference does not find lesions",
    )  # fmt: skip
    ROBUSTNESS_UNSUPPORTED = (
        "ROBUSTNESS_UNSUPPORTED", BundleError, "evaluate --robustness on a segmentation bundle"
    )
    INFER_CLASSIFIER_INVALID = (
        "INFER_CLASSIFIER_INVALID", BundleError,
        "infer --classifier: the bundle lacks crop_spacing, crop_size, network_def or crop_transforms",
    )  # fmt: skip
    # --- manifests and labelled cases
    MANIFEST_INVALID = (
        "MANIFEST_INVALID", ManifestError, "a manifest is not JSON, has no splits, or an entry lacks a key"
    )
    MANIFEST_NOT_FOUND = "MANIFEST_NOT_FOUND", ManifestError, "the manifest file does not exist"
    MANIFEST_UNKNOWN_SPLIT = "MANIFEST_UNKNOWN_SPLIT", ManifestError, "a split the manifest lacks (the splits it has are listed)"  # fmt: skip
    MANIFEST_EMPTY_SPLIT = "MANIFEST_EMPTY_SPLIT", ManifestError, "a split (or an image folder) holds no case"
    MANIFEST_MISSING_FILES = (
        "MANIFEST_MISSING_FILES", ManifestError, "files of a split do not exist (the first 5 listed): set dataset_dir"
    )
    MANIFEST_PATH_ESCAPES = (
        "MANIFEST_PATH_ESCAPES", ManifestError,
        "an entry's path resolves outside the dataset folder (../, absolute, symlink): "
        '"allow_outside_dataset_dir": true in the manifest allows it',
    )  # fmt: skip
    MANIFEST_UNPAIRED = "MANIFEST_UNPAIRED", ManifestError, "manifest folder: images and labels that do not pair by file name"  # fmt: skip
    DATA_GEOMETRY_MISMATCH = "DATA_GEOMETRY_MISMATCH", ManifestError, "a label is not on its image's grid (every such case listed)"  # fmt: skip
    DATA_UNEXPECTED_LABELS = "DATA_UNEXPECTED_LABELS", ManifestError, "a label holds values outside 0..num_classes-1 (cases listed)"  # fmt: skip
    MEDMNIST_UNREADABLE = "MEDMNIST_UNREADABLE", ManifestError, "a MedMNIST file is missing or not a readable npz"
    MEDMNIST_MISSING_KEYS = "MEDMNIST_MISSING_KEYS", ManifestError, "the npz lacks {train,val,test}_{images,labels}"  # fmt: skip
    MEDMNIST_BAD_SHAPE = "MEDMNIST_BAD_SHAPE", ManifestError, "images are not (N, D, D, D) cubes, or labels not one per image"  # fmt: skip
    MEDMNIST_UNKNOWN_DATASET = (
        "MEDMNIST_UNKNOWN_DATASET", ManifestError,
        "the file name is no MedMNIST 3D flag, so the number of classes is unknown: pass --num-classes",
    )  # fmt: skip
    MEDMNIST_UNEXPECTED_LABELS = "MEDMNIST_UNEXPECTED_LABELS", ManifestError, "MedMNIST labels outside 0..num_classes-1"  # fmt: skip
    MANIFEST_NO_COLUMN = (
        "MANIFEST_NO_COLUMN", ManifestError, "manifest crops: the table lacks a column the datalist needs (label, patient)"
    )
    LIDC_XML_INVALID = "LIDC_XML_INVALID", ManifestError, "an LIDC reader file is not readable LIDC XML"
    LIDC_SERIES_MISMATCH = "LIDC_SERIES_MISMATCH", ManifestError, "an LIDC XML file names another series than the images beside it"  # fmt: skip
    PASTE_RECIPE_INVALID = (
        "PASTE_RECIPE_INVALID", ManifestError, "manifest paste: a recipe's slab lies outside its host or overlaps another, or its split is unknown"
    )
    # --- synthetic data
    DATA_GENERATION_FAILED = (
        "DATA_GENERATION_FAILED", DataGenerationError, "synthetic data could not be written (disk full, permissions)"
    )
    DATA_DIR_CONFLICT = (
        "DATA_DIR_CONFLICT", DataGenerationError, "the folder for generated data exists but no medpipe generator made it"
    )
    DATA_UNKNOWN_GENERATOR = (
        "DATA_UNKNOWN_GENERATOR", DataGenerationError, "a manifest names a data generator this medpipe does not have"
    )
    DATA_GENERATOR_VERSION = (
        "DATA_GENERATOR_VERSION", DataGenerationError,
        "a manifest asks for another version of a generator than this medpipe makes",
    )  # fmt: skip
    PHANTOM_INVALID_SPEC = "PHANTOM_INVALID_SPEC", DataGenerationError, "bad synthetic-case parameters"
    PHANTOM_INVALID_SEED = "PHANTOM_INVALID_SEED", DataGenerationError, "a phantom seed that is not an integer >= 0"
    PHANTOM_NODULE_PLACEMENT = (
        "PHANTOM_NODULE_PLACEMENT", DataGenerationError, "the asked nodules do not fit in the phantom's lungs"
    )
    # --- inputs of commands
    INPUT_NOT_FOUND = "INPUT_NOT_FOUND", InputError, "an input path does not exist"
    INPUT_NO_IMAGES = "INPUT_NO_IMAGES", InputError, "an input folder holds no DICOM series or NIfTI file"
    INFER_UNSUPPORTED_MODALITY = (
        "INFER_UNSUPPORTED_MODALITY", InputError,
        "infer: a series of a modality not selected (default: the bundle's input modality)",
    )  # fmt: skip
    INFER_SEG_FAILED = (
        "INFER_SEG_FAILED", InputError, "infer: the source headers cannot make a DICOM SEG (--format nifti)"
    )
    INFER_SEG_UNSUPPORTED = (
        "INFER_SEG_UNSUPPORTED", InputError, "infer: no DICOM SEG for this source (multi-frame, not validated)"
    )
    INFER_OUT_OF_MEMORY = (
        "INFER_OUT_OF_MEMORY", InputError, "infer: a series ran out of memory; recorded, the run goes on"
    )
    INFER_NOTHING_DONE = "INFER_NOTHING_DONE", InputError, "infer: no series could be processed (see failures.csv)"
    INFER_OUTPUT_INSIDE_INPUT = (
        "INFER_OUTPUT_INSIDE_INPUT", InputError, "infer: --output lies inside the --input folder"
    )
    INFER_BAD_FORMAT = "INFER_BAD_FORMAT", InputError, "infer --format names a format other than nifti, dicom-seg"
    INFER_BAD_SELECT = "INFER_BAD_SELECT", InputError, "infer --select is not modality=..."
    INFER_BAD_SHARD = "INFER_BAD_SHARD", InputError, "infer --shard is not K/N with 1 <= K <= N"
    INFER_BAD_WORKERS = (
        "INFER_BAD_WORKERS", InputError, "infer --workers is not an integer >= 1, or is given with --scheduler"
    )
    INFER_SCHEDULER_UNREACHABLE = (
        "INFER_SCHEDULER_UNREACHABLE", InputError,
        "infer --scheduler: no Dask scheduler answers at the address (or it is not tcp://HOST:PORT)",
    )  # fmt: skip
    INFER_WORKER_DIED = (
        "INFER_WORKER_DIED", InputError,
        "infer --workers/--scheduler: every Dask worker that ran a series died (killed, out of memory); "
        "recorded, the run goes on",
    )  # fmt: skip
    EXPLAIN_INVALID = "EXPLAIN_INVALID", InputError, "explain: a --class the network does not have"
    OPTION_INVALID = (
        "OPTION_INVALID", InputError,
        "an option value is not one of its choices (--format, --select, --method, --class...; closest named)",
    )  # fmt: skip
    NIFTI_INVALID = "NIFTI_INVALID", NiftiError, "a NIfTI file cannot be used (no more specific code)"
    NIFTI_UNREADABLE = "NIFTI_UNREADABLE", NiftiError, "a NIfTI file is unreadable or truncated"
    NIFTI_TOO_LARGE = (
        "NIFTI_TOO_LARGE", NiftiError,
        "the header claims more voxel bytes than 4 GiB, a dimension over 32767 or an extension over 64 MiB (refused unread)",
    )  # fmt: skip
    NIFTI_NOT_3D = "NIFTI_NOT_3D", NiftiError, "a NIfTI image has more than three non-singleton dimensions"
    NIFTI_NO_ORIENTATION = (
        "NIFTI_NO_ORIENTATION", NiftiError, "qform_code = sform_code = 0: the orientation in the patient is unknown"
    )
    NIFTI_BAD_AFFINE = "NIFTI_BAD_AFFINE", NiftiError, "a singular or non-finite NIfTI affine"
    NIFTI_NONFINITE = "NIFTI_NONFINITE", NiftiError, "a NIfTI image holds NaN or infinite voxels"
    # --- DICOM (docs/dicom.md has the options that repair some of these)
    DICOM_INVALID = "DICOM_INVALID", DicomError, "a DICOM series cannot be used (no more specific code)"
    DICOM_MISSING_SLICES = (
        "DICOM_MISSING_SLICES", DicomError, "slices are missing: every step a multiple of the smallest (--resample-gaps)"
    )
    DICOM_INCONSISTENT_SPACING = (
        "DICOM_INCONSISTENT_SPACING", DicomError, "slice steps differ by more than 5 % of a slice (--resample-gaps)"
    )
    DICOM_GANTRY_TILT = (
        "DICOM_GANTRY_TILT", DicomError, "slice origins drift within the slice plane: a sheared stack (--correct-tilt)"
    )
    DICOM_DUPLICATE_POSITION = (
        "DICOM_DUPLICATE_POSITION", DicomError, "two or more images at one position (echoes, phases, repeats)"
    )
    DICOM_MIXED_ORIENTATION = (
        "DICOM_MIXED_ORIENTATION", DicomError, "slices of different orientations given as one stack"
    )
    DICOM_INCONSISTENT_SLICES = "DICOM_INCONSISTENT_SLICES", DicomError, "slices with different PixelSpacing"
    DICOM_TOO_FEW_SLICES = "DICOM_TOO_FEW_SLICES", DicomError, "fewer slices than --min-slices (3)"
    DICOM_NO_GEOMETRY = (
        "DICOM_NO_GEOMETRY", DicomError, "no ImagePositionPatient / ImageOrientationPatient / PixelSpacing"
    )
    DICOM_INVALID_ORIENTATION = (
        "DICOM_INVALID_ORIENTATION", DicomError, "the direction cosines are not finite, orthogonal unit vectors"
    )
    DICOM_INVALID_POSITION = (
        "DICOM_INVALID_POSITION", DicomError, "ImagePositionPatient is not three finite numbers"
    )
    DICOM_INVALID_SPACING = (
        "DICOM_INVALID_SPACING", DicomError, "a PixelSpacing / slice spacing in use is not finite and positive"
    )
    DICOM_INVALID_RESCALE = (
        "DICOM_INVALID_RESCALE", DicomError, "RescaleSlope is NaN, infinite or 0, or RescaleIntercept not finite"
    )
    DICOM_UNSUPPORTED_TRANSFER_SYNTAX = (
        "DICOM_UNSUPPORTED_TRANSFER_SYNTAX", DicomError, "pydicom has no installed decoder (the plugin is named)"
    )
    DICOM_UNSUPPORTED_IMAGE = "DICOM_UNSUPPORTED_IMAGE", DicomError, "a colour image (SamplesPerPixel > 1)"
    DICOM_NO_PIXEL_DATA = "DICOM_NO_PIXEL_DATA", DicomError, "the file has no Pixel Data element"
    DICOM_CORRUPT_FILE = (
        "DICOM_CORRUPT_FILE", DicomError, "truncated pixel data, an undecodable frame, an unparsable .dcm file"
    )
    DICOM_TOO_LARGE = "DICOM_TOO_LARGE", DicomError, "a file claims over 4 GiB of pixels or 32768 frames, or inflates past 4 GiB (refused unread)"
    DICOM_LOCALIZER = "DICOM_LOCALIZER", DicomError, "a series of localizer/scout images only"
    DICOM_NO_SERIES = "DICOM_NO_SERIES", DicomError, "nothing loadable in the folder (what was found is counted)"
    DICOM_MULTIPLE_SERIES = (
        "DICOM_MULTIPLE_SERIES", DicomError, "several loadable series and no id: use folder#<id> or --series"
    )
    DICOM_SERIES_NOT_FOUND = "DICOM_SERIES_NOT_FOUND", DicomError, "a series id that is not in the folder"
    DICOM_RESAMPLE_INVALID_INPUT = (
        "DICOM_RESAMPLE_INVALID_INPUT", DicomError, "slice resampling was given arrays of inconsistent shapes"
    )
    DICOM_WRITE_INVALID_INPUT = (
        "DICOM_WRITE_INVALID_INPUT", DicomError, "a volume cannot be written as a CT series (shape, spacing, dtype)"
    )
    DICOM_WRITE_FAILED = "DICOM_WRITE_FAILED", DicomError, "a CT series could not be written to disk"
    # --- PACS archives (infer --source; docs/pacs.md)
    INFER_INPUT_OR_SOURCE = "INFER_INPUT_OR_SOURCE", InputError, "infer: give exactly one of --input (a folder) and --source (an archive); --study, --query, --push and --pacs-config need --source"  # fmt: skip
    PACS_BAD_SOURCE = "PACS_BAD_SOURCE", InputError, "infer --source is not dicomweb+http(s)://HOST[:PORT]/PATH or dimse://HOST:PORT/AET, carries credentials in the URL, or comes without --study / a valid --query"  # fmt: skip
    PACS_CONFIG_INVALID = "PACS_CONFIG_INVALID", InputError, "--pacs-config is unreadable, not a JSON object, has an unknown key, or holds a secret and is readable by others (chmod 600)"  # fmt: skip
    PACS_UNREACHABLE = "PACS_UNREACHABLE", InputError, "the archive does not answer (connection refused, timeout, unknown host) after the retries, or refuses the DIMSE association"  # fmt: skip
    PACS_TLS_FAILED = "PACS_TLS_FAILED", InputError, "the archive's TLS certificate cannot be verified (--ca-bundle), or the client certificate is refused"  # fmt: skip
    PACS_AUTH_FAILED = "PACS_AUTH_FAILED", InputError, "the archive refuses the credentials (HTTP 401/403): MEDPIPE_DICOMWEB_* or --pacs-config"  # fmt: skip
    PACS_REQUEST_FAILED = "PACS_REQUEST_FAILED", InputError, "the archive answers a search (QIDO-RS, C-FIND) with an error (status named)"  # fmt: skip
    PACS_STUDY_NOT_FOUND = "PACS_STUDY_NOT_FOUND", InputError, "infer --study names a StudyInstanceUID the archive does not have"  # fmt: skip
    PACS_RETRIEVE_FAILED = "PACS_RETRIEVE_FAILED", InputError, "a series could not be retrieved (WADO-RS, C-MOVE: an error, no instances); recorded in studies.csv, the run goes on"  # fmt: skip
    PACS_PUSH_FAILED = "PACS_PUSH_FAILED", InputError, "infer --push: storing a SEG (STOW-RS, C-STORE) failed after the retries or the archive does not list it; recorded in pushes.csv, retried by the next run"  # fmt: skip


MedpipeError.code = Code.MEDPIPE_ERROR
BundleError.code = Code.BUNDLE_INVALID
ManifestError.code = Code.MANIFEST_INVALID
InputError.code = Code.OPTION_INVALID
NiftiError.code = Code.NIFTI_INVALID
DicomError.code = Code.DICOM_INVALID
DataGenerationError.code = Code.DATA_GENERATION_FAILED


def did_you_mean(value: str, choices: Iterable[str], *, n: int = 3, cutoff: float = 0.6) -> str:
    """``"; did you mean 'a' or 'b'?"`` for the choices closest to ``value``, or ``""``."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=n, cutoff=cutoff)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def look_up(
    value: str,
    choices: Iterable[str],
    *,
    what: str,
    code: Code = Code.OPTION_INVALID,
    show: int = 12,
    cutoff: float = 0.6,
) -> str:
    """``value`` if it is one of ``choices``; else ``code`` naming the closest choices (and some valid ones).

    ``what`` names the option in the message (``"--format"``, ``"config id"``...).
    """
    options = list(dict.fromkeys(str(c) for c in choices))
    if value in options:
        return value
    hint = did_you_mean(value, options, cutoff=cutoff)
    listed = ", ".join(options[:show]) + (f", ... ({len(options) - show} more)" if len(options) > show else "")
    raise code(f"{what} {value!r} is not valid{hint} (choose from {listed})")


def find_medpipe_error(exc: BaseException) -> MedpipeError | None:
    """Return the first :class:`MedpipeError` in ``exc``'s cause/context chain, if any.

    MONAI's config parser wraps exceptions raised while evaluating ``$`` expressions in its own
    ``RuntimeError``; this recovers our coded error so the CLI can still print one clean line.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, MedpipeError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def markdown_table() -> str:
    """The registry as the Markdown table of ``docs/errors.md``."""
    lines = ["| code | exception | meaning |", "|---|---|---|"]
    lines += [f"| `{c.value}` | `{c.error.__name__}` | {c.meaning} |" for c in Code]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
