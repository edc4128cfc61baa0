"""The error registry: one owner per code, every code raised is documented, every documented code exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from medpipe.errors import (
    Code,
    DicomError,
    InputError,
    ManifestError,
    MedpipeError,
    did_you_mean,
    find_medpipe_error,
    look_up,
    markdown_table,
)
from tests.conftest import REPO

PACKAGE = REPO / "medpipe"
CODE_LIKE = re.compile(r"\b[A-Z][A-Z0-9]+(?:_[A-Z0-9]+)+\b")
#: Upper-case tokens in docs that are not error codes (environment variables, DICOM keywords, constants).
NOT_CODES = re.compile(
    r"^(MEDPIPE_DATA|MEDPIPE_TRUST_\w+|MEDPIPE_DICOMWEB_\w+|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|XDG_CACHE_HOME|CT_IMAGE_STORAGE|NODULE_KINDS|NODULE_SHAPES|OMP_\w+|MKL_\w+|EXIT_\w+|HEADER_TAGS|"
    r"CUDA_VISIBLE_DEVICES|SLURM_\w+|WORLD_SIZE|LOCAL_WORLD_SIZE|LOCAL_RANK|HYPOTHESIS_PROFILE|MAX_\w+_BYTES|XDG_CONFIG_HOME|PYTORCH_\w+|MALLOC_\w+|M_\w+|HU_\w+|SLAB_VOXELS|GENERATOR_\w+|DEFAULT_\w+|"
    r"RESULT_FIELDS|LESION_FIELDS|FAILURE_FIELDS|TYPE2_COPIED|SIDECAR_FIELDS|MIN_CAM_SIZE|RUNS_DIR|INFERENCE_\w+|PERFORMANCE_HINT|"
    r"[A-Z]+_(SUFFIXES|FILE|DIR|LENGTH|THRESHOLD|WINDOW|RANGE|SHAPE|SPACING|SPLITS|SEED))$"
)


def referenced_codes() -> dict[str, list[str]]:
    """``Code.X`` attribute uses in the package: code -> where."""
    used: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Code":
                if not node.attr.startswith("_") and node.attr not in ("error", "meaning"):
                    used.setdefault(node.attr, []).append(f"{path.relative_to(REPO)}:{node.lineno}")
    return used


def test_members_are_named_by_their_value_and_name_a_medpipe_error_class() -> None:
    for code in Code:
        assert code.name == code.value and code == code.value
        assert issubclass(code.error, MedpipeError)
        assert code.meaning and "\n" not in code.meaning and "|" not in code.meaning, code


def test_a_code_builds_its_registered_exception() -> None:
    err = Code.MANIFEST_NOT_FOUND("manifest x.json does not exist")
    assert type(err) is ManifestError and isinstance(err, ValueError)
    assert err.code == "MANIFEST_NOT_FOUND" and str(err) == "MANIFEST_NOT_FOUND: manifest x.json does not exist"
    assert isinstance(Code.DICOM_GANTRY_TILT("tilted"), DicomError)
    assert isinstance(Code.DICOM_GANTRY_TILT("tilted"), InputError)  # a DICOM problem is a bad input
    assert f"{Code.INPUT_NOT_FOUND}" == "INPUT_NOT_FOUND" and f"{Code.INPUT_NOT_FOUND:>16}" == " INPUT_NOT_FOUND"


def test_an_unregistered_code_is_refused() -> None:
    with pytest.raises(ValueError, match="NOT_A_CODE"):
        MedpipeError("x", code="NOT_A_CODE")


def test_every_code_the_package_names_is_registered_and_every_registered_code_is_used() -> None:
    used = referenced_codes()
    unknown = {c: where for c, where in used.items() if c not in Code.__members__}
    assert not unknown, unknown
    defaults = {Code.MEDPIPE_ERROR, Code.BUNDLE_INVALID, Code.NIFTI_INVALID}  # class-level defaults
    unused = [c.value for c in Code if c.value not in used and c not in defaults]
    assert not unused, f"registered but never raised: {unused}"


def test_no_code_is_spelt_as_a_string_outside_the_registry() -> None:
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in Code.__members__:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value}")
    assert not found, found


def test_docs_list_the_registry_and_mention_no_code_that_does_not_exist() -> None:
    errors_md = (REPO / "docs" / "errors.md").read_text()
    assert markdown_table() in errors_md  # regenerate with: python -m medpipe.errors
    docs = {p.name: p.read_text() for p in (REPO / "docs").glob("*.md")}
    docs["README.md"] = (REPO / "README.md").read_text()
    stale = sorted(
        {f"{name}: {token}" for name, text in docs.items() for token in CODE_LIKE.findall(text)
         if token not in Code.__members__ and not NOT_CODES.match(token)}
    )  # fmt: skip
    assert not stale, stale


def test_look_up_names_the_closest_choices() -> None:
    assert look_up("nifti", ["nifti", "dicom-seg"], what="--format") == "nifti"
    with pytest.raises(InputError) as e:
        look_up("nifty", ["nifti", "dicom-seg"], what="--format", code=Code.INFER_BAD_FORMAT)
    assert e.value.code == "INFER_BAD_FORMAT" and "did you mean 'nifti'" in str(e.value)
    assert "dicom-seg" in str(e.value)  # the valid choices are listed
    assert did_you_mean("zzz", ["nifti"]) == ""


def test_coded_errors_are_found_in_a_wrapped_chain() -> None:
    inner = Code.CONFIG_INVALID("bad value")
    try:
        try:
            raise inner
        except MedpipeError as e:
            raise RuntimeError("Failed to evaluate") from e
    except RuntimeError as outer:
        assert find_medpipe_error(outer) is inner
    assert find_medpipe_error(RuntimeError("plain")) is None


def test_structure_check_finds_no_undocumented_code() -> None:
    """What ../shared/tools/structure-check reports as 'codes not mentioned in docs/' is empty."""
    docs = "".join(p.read_text() for p in (REPO / "docs").rglob("*.md"))
    missing = [c.value for c in Code if c.value not in docs]
    assert not missing, missing


def test_package_source_has_no_legacy_code_keyword() -> None:
    """Raise sites build errors from the registry (``Code.X(message)``), not ``XError(msg, code="X")``."""
    offenders = [
        f"{p.relative_to(REPO)}" for p in PACKAGE.rglob("*.py")
        if re.search(r'code="[A-Z_]+"', p.read_text())
    ]  # fmt: skip
    assert not offenders, offenders


def test_errors_module_is_the_only_definition_of_exception_classes() -> None:
    classes = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and b.id.endswith("Error") for b in node.bases
            ):
                classes.append((Path(path).name, node.name))
    assert {f for f, _ in classes} == {"errors.py"}, classes
