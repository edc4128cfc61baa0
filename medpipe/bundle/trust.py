"""Bundle trust: a MONAI bundle config is code, so a bundle from elsewhere is read, not run, until trusted.

MONAI evaluates every ``$`` value with Python's ``eval``, imports and calls every ``_target_`` and
runs a bundle's ``scripts/`` package, with no allow-list (GHSA-873f-pvrv-4x83). medpipe checks every
bundle before any of its configs is parsed (:func:`check_trust`, called by ``BundleLayout.open``, so
``train``, ``evaluate``, ``infer``, ``explain``, ``export``, ``check`` and ``promote`` all do):

* a config file whose content is one of this package's shipped bundles' (sha256 in
  ``shipped_configs.json``) or one the user trusted (``medpipe trust DIR``, a user-level store) is
  trusted: a changed file is not;
* any other file is scanned (:func:`findings_of`): ``$`` expressions, ``_target_`` outside
  :data:`ALLOWED_TARGETS` (bare names are MONAI components), ``imports``, ``%`` macros that read other
  files; a ``scripts/`` folder is a finding too. With any finding the bundle is refused with
  ``BUNDLE_UNTRUSTED``, every finding listed (file, config id, value);
* ``--trust-bundle`` (the environment variable :data:`TRUST_ENV`, which the processes a command starts
  inherit) trusts every bundle for one run.

``python -m monai.bundle run`` is MONAI's own runner and does none of this (docs/security.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medpipe.atomic import atomic_write_text, file_sha256
from medpipe.errors import Code

CONFIG_EXTS = (".json", ".yaml", ".yml")
#: ``_target_`` prefixes a bundle from elsewhere may call without trust (bare names: MONAI components)
ALLOWED_TARGETS = ("monai.", "medpipe.", "torch.", "ignite.")
#: set to 1 by ``--trust-bundle``: every bundle is trusted for this run (and the processes it starts)
TRUST_ENV = "MEDPIPE_TRUST_BUNDLE"
#: where the user's trust store is (default ``$XDG_CONFIG_HOME/medpipe/trusted_bundles.json``)
STORE_ENV = "MEDPIPE_TRUST_STORE"
SHIPPED = Path(__file__).with_name("shipped_configs.json")
SCRIPTS = "scripts/"


@dataclass(frozen=True)
class Finding:
    """One thing in a bundle that would run code: where, and what."""

    file: str
    config_id: str
    kind: str
    value: str

    def line(self) -> str:
        value = self.value if len(self.value) <= 100 else self.value[:97] + "..."
        return f"{self.file}: {self.config_id or '(top)'}: {self.kind} {value!r}"


def config_files(root: Path) -> list[Path]:
    configs = Path(root) / "configs"
    return sorted(p for p in configs.iterdir() if p.is_file() and p.suffix in CONFIG_EXTS) if configs.is_dir() else []


def scripts_sha256(root: Path) -> str | None:
    """One digest of every file under ``scripts/`` (None without the folder)."""
    folder = Path(root) / "scripts"
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            digest.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes())
    return digest.hexdigest()


def _walk(node: Any, config_id: str) -> Iterator[tuple[str, str, str]]:
    if isinstance(node, dict):
        target = node.get("_target_")
        if isinstance(target, str) and not target.startswith("$") and "." in target:
            if not target.startswith(ALLOWED_TARGETS):
                yield config_id, "_target_ outside monai./medpipe./torch./ignite.", target
        for key, value in node.items():
            yield from _walk(value, f"{config_id}::{key}" if config_id else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{config_id}::{i}" if config_id else str(i))
    elif isinstance(node, str):
        if node.startswith("$"):
            yield config_id, "expression", node
        elif node.startswith("%") and "#" in node and node[1:].split("#", 1)[0]:
            yield config_id, "macro reading another file", node


def findings_of(path: Path) -> list[Finding]:
    """What in one config file would run code (an unreadable file is one finding: it cannot be checked)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        content = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        return [Finding(path.name, "", "unreadable config", f"{type(exc).__name__}: {str(exc)[:80]}")]
    out = []
    if isinstance(content, dict) and "imports" in content:
        imports = content["imports"] if isinstance(content["imports"], list) else [content["imports"]]
        out += [Finding(path.name, "imports", "import", str(v)) for v in imports]
        content = {k: v for k, v in content.items() if k != "imports"}
    out += [Finding(path.name, cid, kind, value) for cid, kind, value in _walk(content, "")]
    return out


def scripts_finding(root: Path) -> Finding:
    return Finding(SCRIPTS, "", "scripts package (MONAI imports it)", str(Path(root) / "scripts"))


def bundle_findings(root: Path) -> list[Finding]:
    """Every finding of a bundle, trusted or not (what ``medpipe trust`` shows before it records)."""
    found = [f for p in config_files(root) for f in findings_of(p)]
    return found + ([scripts_finding(root)] if scripts_sha256(root) is not None else [])


def store_path() -> Path:
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "medpipe" / "trusted_bundles.json"


def read_store() -> dict[str, Any]:
    path = store_path()
    if not path.is_file():
        return {"bundles": {}}
    try:
        store = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(store.get("bundles"), dict):
            raise ValueError("no bundles")
        return store
    except (ValueError, AttributeError) as exc:
        raise Code.BUNDLE_UNTRUSTED(f"the trust store {path} is not one medpipe wrote ({exc}); move it away") from None


def _write_store(store: dict[str, Any]) -> None:
    path = store_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(store, indent=1, sort_keys=True) + "\n")


def shipped_digests() -> set[str]:
    return set(json.loads(SHIPPED.read_text(encoding="utf-8"))["files"].values()) if SHIPPED.is_file() else set()


def trusted_digests() -> set[str]:
    """The config (and scripts) digests trusted here: the shipped bundles' and the user's."""
    user = {d for entry in read_store()["bundles"].values() for d in entry.get("files", {}).values()}
    return shipped_digests() | user


def untrusted_findings(root: Path) -> list[Finding]:
    """The findings of the files of ``root`` whose content is not trusted (empty: the bundle may run)."""
    shipped = shipped_digests()
    digests = {p: file_sha256(p) for p in config_files(root)}
    scripts = scripts_sha256(root)
    left = {d for d in [*digests.values(), scripts] if d is not None and d not in shipped}
    # the user's store only when something is not shipped (a shipped bundle runs whatever that file holds)
    trusted = trusted_digests() if left else shipped
    out = [f for p, d in digests.items() if d not in trusted for f in findings_of(p)]
    if scripts is not None and scripts not in trusted:
        out.append(scripts_finding(root))
    return out


def check_trust(root: Path) -> None:
    """Refuse a bundle that would run code nobody trusted (see the module docstring)."""
    if os.environ.get(TRUST_ENV) == "1":
        return
    found = untrusted_findings(root)
    if found:
        lines = "\n  ".join(f.line() for f in found)
        raise Code.BUNDLE_UNTRUSTED(
            f"bundle {Path(root).name} would run code that is not trusted here ({len(found)} finding(s)); "
            f"read them, then `medpipe trust {root}` to trust these files, or --trust-bundle for one run:\n  "
            + lines
        )


def trust(root: Path) -> dict[str, Any]:
    """Record the digests of ``root``'s configs (and scripts) in the user's trust store; returns its entry."""
    root = Path(root).resolve()
    files = {p.name: file_sha256(p) for p in config_files(root)}
    scripts = scripts_sha256(root)
    if scripts is not None:
        files[SCRIPTS] = scripts
    entry = {"files": files, "trusted_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "findings": len(bundle_findings(root))}
    store = read_store()
    store["bundles"][str(root)] = entry
    _write_store(store)
    return entry


def revoke(root: Path) -> bool:
    """Forget ``root``'s entry; False when it had none."""
    store = read_store()
    found = store["bundles"].pop(str(Path(root).resolve()), None) is not None
    if found:
        _write_store(store)
    return found


def record_shipped(bundles_dir: Path) -> dict[str, str]:
    """Write ``shipped_configs.json`` from the repository's ``bundles/`` (a deliberate act, like a version bump)."""
    files = {f"{b.name}/configs/{p.name}": file_sha256(p) for b in sorted(Path(bundles_dir).iterdir())
             if b.is_dir() for p in config_files(b)}  # fmt: skip
    SHIPPED.write_text(json.dumps({"files": files}, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return files


if __name__ == "__main__":  # python -m medpipe.bundle.trust bundles/: re-record the shipped configs
    import sys

    recorded = record_shipped(Path(sys.argv[1] if len(sys.argv) > 1 else "bundles"))
    print(f"recorded {len(recorded)} shipped config files in {SHIPPED}")
