"""What medpipe infer runs on: --select and the modality refusal."""

from __future__ import annotations

import pytest

from medpipe.errors import MedpipeError
from medpipe.infer.sources import Source, parse_select, refuse_unselected


def test_select_parses_modalities_and_refuses_others() -> None:
    assert parse_select(("modality=ct,mr",)) == {"modality": {"CT", "MR"}}
    for bad in ("modality", "bodypart=CHEST", "modality="):
        with pytest.raises(MedpipeError) as err:
            parse_select((bad,))
        assert err.value.code == "INFER_BAD_SELECT"
    ct = Source("a", "dicom", "f", "CT")
    mr = Source("b", "dicom", "f", "MR")
    nii = Source("c", "nifti", "f", None)
    for s in (ct, mr, nii):
        refuse_unselected(s, {"modality": {"CT"}})
    assert ct.error is None and nii.error is None
    assert mr.error is not None and mr.error.code == "INFER_UNSUPPORTED_MODALITY"
