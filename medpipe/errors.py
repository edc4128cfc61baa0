"""Errors with stable codes.

Every mistake a user can make, or bad input a pipeline can meet, raises a :class:`MedpipeError`
subclass carrying a stable ``code`` (``MANIFEST_MISSING_FILES``, ``CONFIG_UNKNOWN_ID``...). The CLI
prints ``CODE: message`` on one line and exits with :data:`EXIT_INPUT_ERROR`; batch commands record the
code per item and go on. Subclasses also inherit the natural built-in exception so generic handlers
(``except ValueError``) keep working.
"""

from __future__ import annotations

#: Exit status of the CLI when a :class:`MedpipeError` stopped the command (bad input or config).
EXIT_INPUT_ERROR = 3
#: Exit status of a batch command that finished but recorded coded failures for some items.
EXIT_PARTIAL = 4


class MedpipeError(Exception):
    """Base class: ``code`` is stable and machine-readable, the message says what and how to fix."""

    code = "MEDPIPE_ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class BundleError(MedpipeError, ValueError):
    """A bundle folder, its configs or an override is unusable."""

    code = "BUNDLE_INVALID"


class ManifestError(MedpipeError, ValueError):
    """A datalist (manifest) is missing, malformed, points at missing files or has an empty split."""

    code = "MANIFEST_INVALID"


class DataGenerationError(MedpipeError, RuntimeError):
    """Embedded demo data could not be generated (disk full, bad parameters)."""

    code = "DATA_GENERATION_FAILED"


class DicomError(MedpipeError, ValueError):
    """A DICOM object or series cannot be used as asked."""

    code = "DICOM_INVALID"


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
