"""Bundle trust (medpipe.bundle.trust) and the shipped weights' sha256: a bundle from elsewhere is read,
never run, until trusted; a tampered models/model.pt is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from medpipe.bundle import trust
from medpipe.cli import cli
from tests.conftest import REPO

LUNG = REPO / "bundles" / "lung_nodule_ct"


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    """The issue's attack: a copy of a shipped bundle whose network_def gains one ``$`` expression that
    writes a file when evaluated. Returns (bundle, the file it would write)."""
    bundle = tmp_path / "lung_nodule_ct"
    shutil.copytree(LUNG / "configs", bundle / "configs")
    shutil.copytree(LUNG / "models", bundle / "models")
    marker = tmp_path / "PWNED"
    common = json.loads((bundle / "configs" / "common.json").read_text())
    common["network_def"]["channels"] = f"$__import__('pathlib').Path({str(marker)!r}).write_text('x') and [16, 32, 64, 128, 256]"
    (bundle / "configs" / "common.json").write_text(json.dumps(common, indent=4))
    return bundle, marker


def test_shipped_bundles_are_recorded_as_they_are():
    """shipped_configs.json holds the sha256 of every config the repository ships: a changed config is
    re-recorded deliberately (python -m medpipe.bundle.trust bundles), like a version bump."""
    recorded = json.loads(trust.SHIPPED.read_text())["files"]
    current = {f"{b.name}/configs/{p.name}": trust.file_sha256(p)
               for b in sorted((REPO / "bundles").iterdir()) if b.is_dir() for p in trust.config_files(b)}  # fmt: skip
    assert recorded == current
    for bundle in (REPO / "bundles").iterdir():
        assert trust.untrusted_findings(bundle) == []


def test_a_damaged_trust_store_is_refused_but_does_not_stop_the_shipped_bundles(tmp_path, monkeypatch, evil):
    store = tmp_path / "store.json"
    store.write_text("{not json")
    monkeypatch.setenv(trust.STORE_ENV, str(store))
    assert trust.untrusted_findings(LUNG) == []  # shipped: the user's store is not consulted
    with pytest.raises(Exception) as err:
        trust.check_trust(evil[0])
    assert getattr(err.value, "code", None) == "BUNDLE_UNTRUSTED" and "trust store" in str(err.value)


COMMANDS = {
    "evaluate": ["evaluate", "--bundle", "{b}", "--device", "cpu"],
    "train": ["train", "--bundle", "{b}", "--device", "cpu", "--max-epochs", "1", "--output", "{t}/run"],
    "infer": ["infer", "--bundle", "{b}", "--input", "{t}/in", "--output", "{t}/out"],
    "explain": ["explain", "--bundle", "{b}", "--input", "{t}/in/x.nii.gz", "--output", "{t}/ex"],
    "export": ["export", "--bundle", "{b}"],
    "check": ["check", "--bundle", "{b}"],
    "promote": ["promote", "--bundle", "{b}", "--run", "{t}/in"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_refuses_an_untrusted_bundle_before_parsing_it(command, evil, tmp_path):
    bundle, marker = evil
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.nii.gz").write_bytes(b"")
    args = [a.format(b=bundle, t=tmp_path) for a in COMMANDS[command]]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 3, result.output
    assert "BUNDLE_UNTRUSTED" in result.output and "common.json: network_def::channels: expression" in result.output
    assert not marker.exists()  # the expression never ran
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


def test_findings_name_every_kind_of_code(tmp_path: Path):
    bundle = tmp_path / "b"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "scripts").mkdir()
    (bundle / "scripts" / "__init__.py").write_text("import os\n")
    config = {"imports": ["$import os"], "net": {"_target_": "os.system", "command": "true"},
              "ok": {"_target_": "UNet"}, "ok2": {"_target_": "monai.networks.nets.UNet"},
              "macro": "%/etc/other.json#x", "ref": "@net", "local": "%#ok"}  # fmt: skip
    (bundle / "configs" / "train.json").write_text(json.dumps(config))
    (bundle / "configs" / "metadata.json").write_text("{}")
    lines = [f.line() for f in trust.untrusted_findings(bundle)]
    assert lines == [
        "train.json: imports: import '$import os'",
        "train.json: net: _target_ outside monai./medpipe./torch./ignite. 'os.system'",
        "train.json: macro: macro reading another file '%/etc/other.json#x'",
        f"scripts/: (top): scripts package (MONAI imports it) '{bundle / 'scripts'}'",
    ]
    plain = tmp_path / "plain"  # allowed targets only, no expression: runs without trust
    (plain / "configs").mkdir(parents=True)
    (plain / "configs" / "common.json").write_text(json.dumps({"network_def": {"_target_": "UNet"}, "x": "@y"}))
    assert trust.untrusted_findings(plain) == []


def test_trust_list_revoke_and_one_run(evil, tmp_path):
    bundle, marker = evil
    runner = CliRunner()
    result = runner.invoke(cli, ["trust", str(bundle)])
    assert result.exit_code == 0 and "network_def::channels: expression" in result.output
    assert str(bundle.resolve()) in runner.invoke(cli, ["trust", "--list"]).output
    assert runner.invoke(cli, ["check", "--bundle", str(bundle)]).exit_code == 0
    assert marker.exists()  # trusted: its code ran, as the user chose
    marker.unlink()
    # a config changed after trust is untrusted again
    common = bundle / "configs" / "common.json"
    common.write_text(common.read_text().replace("'x'", "'y'"))
    assert "BUNDLE_UNTRUSTED" in runner.invoke(cli, ["check", "--bundle", str(bundle)]).output
    runner.invoke(cli, ["trust", str(bundle)])
    assert runner.invoke(cli, ["trust", "--revoke", str(bundle)]).exit_code == 0
    assert "BUNDLE_UNTRUSTED" in runner.invoke(cli, ["check", "--bundle", str(bundle)]).output and not marker.exists()
    # --trust-bundle: this run only
    assert runner.invoke(cli, ["check", "--trust-bundle", "--bundle", str(bundle)]).exit_code == 0 and marker.exists()
    assert "BUNDLE_UNTRUSTED" in runner.invoke(cli, ["check", "--bundle", str(bundle)]).output


def test_tampered_shipped_weights_are_refused(tmp_path: Path):
    from medpipe.bundle.model import BundleModel
    from medpipe.errors import BundleError
    from medpipe.transfer import init_from

    bundle = tmp_path / "lung_nodule_ct"
    shutil.copytree(LUNG / "configs", bundle / "configs")
    shutil.copytree(LUNG / "models", bundle / "models")
    assert BundleModel.open(bundle, device="cpu").weights.shipped  # intact: opens
    weights = bundle / "models" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        BundleModel.open(bundle, device="cpu")
    assert err.value.code == "BUNDLE_WEIGHTS_TAMPERED"
    with pytest.raises(BundleError) as err:
        init_from(BundleModel.open(LUNG, device="cpu").network, bundle)
    assert err.value.code == "BUNDLE_WEIGHTS_TAMPERED"
    # other weights are the user's explicit choice (--weights), not the bundle's shipped ones
    other = tmp_path / "other.pt"
    shutil.copy(LUNG / "models" / "model.pt", other)
    assert not BundleModel.open(bundle, weights=other, device="cpu").weights.shipped
