"""``medpipe train``, ``promote``, ``export`` and ``check``: a bundle's life from training to shipping."""

from __future__ import annotations

import shlex
import sys

import click

from medpipe.cli.options import bundle_option, device_option, set_option, trust_bundle_option


@click.command()
@bundle_option
@trust_bundle_option
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=str), help="Datalist JSON to train on.")
@click.option("--max-epochs", type=click.IntRange(min=1), help="Number of epochs (config id max_epochs).")
@device_option
@set_option
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=str),
    help="Run folder (default: runs/<bundle>/<YYYYmmdd-HHMMSS>/ under the current directory).",
)
@click.option(
    "-v", "--verbose", is_flag=True, help="Also apply the bundle's logging.conf (MONAI's own logs)."
)
@click.option(
    "--init-from",
    type=click.Path(path_type=str),
    help="Bundle folder or checkpoint: load every weight whose name and shape match.",
)
@click.option(
    "--freeze",
    default="none",
    show_default=True,
    metavar="none|backbone|until:LAYER",
    help="Parameters to keep fixed (until:LAYER freezes up to and including LAYER).",
)
@click.option("--resume", is_flag=True,
              help="Continue the run in --output from its last finished epoch (model, optimizer, scheduler, "
              "random states), with the options it was started with.")  # fmt: skip
@click.option("--seed", type=click.IntRange(min=0), help="Seed of every random draw (config id seed; default 0).")
@click.option("--tracking", type=click.Choice(["mlflow"]),
              help="Also log the run with MONAI's MLflow handlers into <run folder>/mlruns.db.")  # fmt: skip
@click.option("--nproc", type=int, metavar="N",
              help="Train in N processes on this machine (torchrun + DistributedDataParallel; the bundle's "
              "configs/multi_gpu.json): one per GPU, or CPU processes with gloo.")  # fmt: skip
@click.option("--deterministic", is_flag=True,
              help="Also use torch's deterministic algorithms (slower on GPU; CPU runs are deterministic with a seed).")  # fmt: skip
@click.option(
    "--pretrained-lr-scale",
    type=float,
    default=1.0,
    show_default=True,
    help="Learning-rate factor for the weights loaded by --init-from.",
)
def train(
    bundle: str,
    manifest: str | None,
    max_epochs: int | None,
    device: str | None,
    sets: tuple[str, ...],
    output: str | None,
    verbose: bool,
    init_from: str | None,
    freeze: str,
    resume: bool,
    seed: int | None,
    tracking: str | None,
    nproc: int | None,
    deterministic: bool,
    pretrained_lr_scale: float,
) -> None:
    """Train a bundle with its own train config (MONAI SupervisedTrainer) into a new run folder.

    The run folder gets model.pt (best validation checkpoint), training_metrics.json, training_curve.png,
    train.log, config.json and run.json; the bundle's shipped weights are not touched (see promote).
    """
    from medpipe.bundle.overrides import parse_overrides
    from medpipe.train import TrainOptions, train_in_processes
    from medpipe.train import train as run_training

    options = TrainOptions(
        manifest=manifest, max_epochs=max_epochs, device=device, sets=parse_overrides(sets), output=output,
        verbose=verbose, init_from=init_from, freeze=freeze, pretrained_lr_scale=pretrained_lr_scale,
        seed=seed, deterministic=deterministic, resume=resume, tracking=tracking, command=shlex.join(["medpipe", *sys.argv[1:]]),
    )  # fmt: skip
    if nproc is not None:
        train_in_processes(bundle, options, nproc, echo=click.echo)
        return
    run_training(bundle, options, echo=click.echo)


@click.command()
@bundle_option
@trust_bundle_option
@click.option(
    "--run",
    "run",
    required=True,
    type=click.Path(file_okay=False, path_type=str),
    help="Training run folder.",
)
@click.option(
    "--version", "version", metavar="X.Y.Z", help="New bundle version (default: the next minor version)."
)
@click.option("--note", default="", help="Added to the changelog entry.")
def promote(bundle: str, run: str, version: str | None, note: str) -> None:
    """Make a training run's weights the bundle's shipped weights, bumping its version.

    Copies model.pt, training_metrics.json, training_curve.png, threshold.json and run.json (as
    training_run.json) into <bundle>/models and records the run in metadata.json's changelog.
    """
    from medpipe.bundle.promote import promote as run_promote

    result = run_promote(bundle, run, version=version, note=note)
    click.echo(
        f"{bundle}: version {result['previous']} -> {result['version']}, models/model.pt sha256 "
        f"{result['model_sha256'][:8]} from {run}"
    )


@click.command()
@bundle_option
@trust_bundle_option
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=str),
    help="Default: <bundle>/models/model.ts (--onnx: model.onnx, recorded in metadata.json).",
)  # fmt: skip
@click.option("--onnx", is_flag=True,
              help="Export to ONNX with MONAI's convert_to_onnx for --backend onnxruntime/openvino instead.")  # fmt: skip
def export(bundle: str, output: str | None, onnx: bool) -> None:
    """Export models/model.pt to TorchScript with MONAI's ckpt_export (or ONNX), and check it against eager."""
    if onnx:
        from medpipe.bundle.export import export_onnx_model

        res = export_onnx_model(bundle, output)
        checks = ", ".join(f"{b} {d:.1e}" for b, d in res["check_rel_diff"].items())
        click.echo(
            f"wrote {res['onnx']} ({res['mb']} MB, from weights sha256 {res['from_weights_sha256'][:8]}); ONNX Runtime "
            f"vs eager max |diff| = {res['max_abs_diff']:.2e} on {res['input_shape']}; relative to eager: {checks}"
        )
        return
    from medpipe.bundle.export import export_torchscript

    result = export_torchscript(bundle, output)
    click.echo(
        f"wrote {result['torchscript']}; TorchScript vs eager max |diff| = {result['max_abs_diff']:.2e} "
        f"on input {result['input_shape']}"
    )


@click.command()
@bundle_option
@trust_bundle_option
def check(bundle: str) -> None:
    """Check a bundle with MONAI's tools: workflow properties and verify_net_in_out."""
    from medpipe.bundle.checks import check_bundle

    for line in check_bundle(bundle):
        click.echo(line)
