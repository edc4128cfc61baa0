"""Options several commands share, declared once."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

bundle_option = click.option(
    "--bundle",
    "bundle",
    required=True,
    type=click.Path(file_okay=False, path_type=str),
    help="Bundle folder, e.g. bundles/lung_nodule_ct.",
)
set_option = click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="ID=VALUE",
    help="Override any config id, e.g. --set train::dataloader::batch_size=4 (repeatable).",
)
device_option = click.option(
    "--device", type=str, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)."
)
backend_option = click.option(
    "--backend",
    type=click.Choice(["torch", "onnxruntime", "openvino"]),
    help="Where the network runs (default torch): ONNX Runtime or OpenVINO run the bundle's models/model.onnx "
    "(exported on the fly for other weights), checked against PyTorch first (docs/benchmarks.md).",
)
precision_option = click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16"]),
    help="Network precision (default: the bundle's; auto = bf16 where the CPU computes it natively).",
)
weights_option = click.option(
    "--weights",
    type=click.Path(exists=True, path_type=str),
    help="A checkpoint or a training run folder (default: the bundle's shipped models/model.pt).",
)
show_paths_option = click.option(
    "--show-paths",
    is_flag=True,
    help="Also write input paths into reports (they are left out by default: folder and file names often "
    "name the patient).",
)


def _trust_for_this_run(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        from medpipe.bundle.trust import TRUST_ENV

        previous = os.environ.get(TRUST_ENV)
        os.environ[TRUST_ENV] = "1"  # the processes this command starts (torchrun, Dask workers) inherit it
        # for this command only (a test's or a caller's process goes on untrusting)
        ctx.call_on_close(lambda: os.environ.pop(TRUST_ENV) if previous is None else os.environ.update({TRUST_ENV: previous}))


trust_bundle_option = click.option(
    "--trust-bundle",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_trust_for_this_run,
    help="Run a bundle from elsewhere whose configs hold code ($ expressions, imports...) for this run only "
    "(medpipe trust DIR trusts it for good; docs/security.md).",
)


def assembly_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options that let DICOM assembly repair a series instead of refusing it."""
    func = click.option(
        "--min-slices",
        type=click.IntRange(min=1),
        default=3,
        show_default=True,
        help="Refuse shorter stacks.",
    )(func)
    func = click.option(
        "--correct-tilt",
        is_flag=True,
        help="Resample gantry-tilted series onto a rectilinear grid (as dcm2niix).",
    )(func)
    return click.option(
        "--resample-gaps",
        is_flag=True,
        help="Interpolate across missing slices / uneven spacing instead of refusing.",
    )(func)


def assembly(resample_gaps: bool, correct_tilt: bool, min_slices: int):  # -> AssemblyOptions
    from medpipe.dicom.geometry import AssemblyOptions

    return AssemblyOptions(min_slices=min_slices, resample_gaps=resample_gaps, correct_tilt=correct_tilt)
