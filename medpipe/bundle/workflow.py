"""Build a MONAI ``ConfigWorkflow`` for a bundle's train/evaluate/inference configs, with checks.

Everything that can be checked before hours of compute is checked here, in this order, each with a
stable code: the bundle folder and its configs (``BUNDLE_*``), the ``--set`` ids
(``CONFIG_UNKNOWN_ID``), the workflow properties MONAI defines for train/inference bundles
(``BUNDLE_MISSING_PROPERTIES``), the device (``DEVICE_UNAVAILABLE``) and the data the manifest names
(``MANIFEST_*``). Components that fail to build are reported as ``CONFIG_INVALID`` with the config
id and the root cause on one line, instead of MONAI's page of nested tracebacks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle.properties import InferProperties, TrainProperties
from monai.utils import BundleProperty, BundlePropertyConfig

from medpipe.bundle.layout import BundleLayout
from medpipe.bundle.overrides import check_override_ids
from medpipe.errors import BundleError, Code, find_medpipe_error

#: Ids medpipe may set even when a bundle's config does not define them.
MEDPIPE_IDS = ("bundle_root",)
WORKFLOW_TYPES = {"train": "train", "evaluate": "eval", "inference": "infer", "crop": "infer"}


def device_expression(device: str) -> str:
    """``--device`` value -> config expression, refusing a device this machine does not have."""
    dev = device.strip().lower()
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise Code.DEVICE_UNAVAILABLE(
                f"--device {device} asked for CUDA but torch sees no CUDA device here "
                f"(torch {torch.__version__}); use --device cpu",
            )
    elif dev != "cpu":
        raise Code.DEVICE_INVALID(f"--device must be cpu, cuda or cuda:N, got '{device}'")
    return f"$torch.device('{dev}')"


def missing_properties(parser: ConfigParser, workflow: str) -> list[str]:
    """Required properties of MONAI's bundle specification whose config id is absent (nothing is built)."""
    props = TrainProperties if workflow == "train" else InferProperties
    return [
        name
        for name, p in props.items()
        if p.get(BundleProperty.REQUIRED) and p.get(BundlePropertyConfig.ID) not in parser
    ]


def config_error(exc: BaseException) -> BundleError | None:
    """A one-line ``CONFIG_INVALID`` for MONAI's "Failed to instantiate/evaluate" chains, else None."""
    messages = []
    cur: BaseException | None = exc
    while cur is not None:
        messages.append(str(cur).splitlines()[0] if str(cur) else type(cur).__name__)
        cur = cur.__cause__
    if not messages[0].startswith("Failed to"):
        return None
    root = messages[-1]
    where = next((m for m in reversed(messages) if m.startswith("Failed to")), messages[0])
    return Code.CONFIG_INVALID(f"{where} -> {root}")


def build_workflow(
    bundle: str | Path | BundleLayout,
    workflow: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    user_ids: Iterable[str] = (),
    logging_conf: bool = False,
    layers: Iterable[str | Path] = (),
    tracking: Mapping[str, Any] | None = None,
) -> ConfigWorkflow:
    """A checked ``ConfigWorkflow`` for ``workflow`` (``train``, ``evaluate``, ``inference`` or ``crop``).

    ``overrides`` are applied as MONAI overrides; those named in ``user_ids`` came from the user
    (``--set``) and must exist in the configs. ``layers``: config files merged after the workflow's own
    (``configs/multi_gpu.json`` for a run in several processes). ``tracking``: MONAI's experiment-tracking
    settings (``monai.bundle.utils.DEFAULT_MLFLOW_SETTINGS`` layout), patched in by ``ConfigWorkflow``.
    """
    layout = bundle if isinstance(bundle, BundleLayout) else BundleLayout.open(bundle)
    files = [str(p) for p in layout.workflow_configs(workflow)] + [str(p) for p in layers]
    overrides = dict(overrides or {})
    overrides.setdefault("bundle_root", str(layout.root))

    probe = ConfigParser()
    probe.read_config(files)
    check_override_ids(probe, {k: overrides[k] for k in user_ids if k in overrides}, allow_new=MEDPIPE_IDS)

    log_file: str | bool = str(layout.logging_conf) if (logging_conf and layout.logging_conf) else False
    quiet = logging.getLogger("monai.bundle.workflows")
    previous = quiet.level
    quiet.setLevel(logging.ERROR)  # "logging file is set to False" is our choice, not news
    try:
        wf = ConfigWorkflow(
            config_file=files,
            meta_file=str(layout.metadata),
            logging_file=log_file,
            workflow_type=WORKFLOW_TYPES[workflow],
            tracking=dict(tracking) if tracking else None,
            **overrides,
        )
        wf.initialize()
    finally:
        quiet.setLevel(previous)
    missing = [] if workflow == "crop" else missing_properties(wf.parser, "train" if workflow == "train" else "infer")
    if missing:
        raise Code.BUNDLE_MISSING_PROPERTIES(
            f"bundle {layout.root.name} lacks the {workflow} properties {missing} that MONAI's bundle "
            "specification requires (see monai.bundle.properties)",
        )
    return wf


def parsed(wf: ConfigWorkflow, config_id: str) -> Any:
    """Resolve one config id, turning MONAI's nested construction errors into ``CONFIG_INVALID``."""
    try:
        return wf.parser.get_parsed_content(config_id)
    except Exception as e:  # noqa: BLE001 - re-raised unless it is a config or medpipe error
        coded = find_medpipe_error(e) or config_error(e)
        if coded is not None:
            raise coded from e
        raise
