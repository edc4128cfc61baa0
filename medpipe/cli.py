"""The ``medpipe`` command line.

Heavy imports (torch, MONAI) happen inside commands so ``medpipe --help`` is instant. A
:class:`~medpipe.errors.MedpipeError` -- bad input or config -- ends the command with one line,
``error: CODE: message``, and exit status 3; click's usage errors exit 2; anything else is a bug and
shows its traceback.

Exit status: 0 success, 1 unexpected error (a bug), 2 usage error, 3 bad input or config, 4 partial
(a batch command did some items and recorded coded failures for others).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Any

import click

from medpipe import __version__
from medpipe.errors import EXIT_INPUT_ERROR, EXIT_PARTIAL, Code, MedpipeError, find_medpipe_error


class MedpipeGroup(click.Group):
    """Turns coded errors into one line and a stable exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:
            coded = find_medpipe_error(e)
            if coded is None:
                raise
            click.echo(f"error: {coded}", err=True)
            ctx.exit(EXIT_INPUT_ERROR)


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


@click.group(cls=MedpipeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medpipe")
def cli() -> None:
    """medpipe: DICOM-aware MONAI bundles for 3D CT and MRI."""


@cli.command()
@bundle_option
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=str), help="Datalist JSON to train on.")
@click.option("--max-epochs", type=click.IntRange(min=1), help="Number of epochs (config id max_epochs).")
@click.option("--device", type=str, help="cpu, cuda or cuda:N (default: cuda if available, else cpu).")
@set_option
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
    verbose: bool,
    init_from: str | None,
    freeze: str,
    pretrained_lr_scale: float,
) -> None:
    """Train a bundle with its own train config (MONAI SupervisedTrainer).

    Saves the best checkpoint as <bundle>/models/model.pt with training_metrics.json and
    training_curve.png beside it.
    """
    from medpipe.bundle.overrides import parse_overrides
    from medpipe.train import train as run_training

    run_training(
        bundle,
        manifest=manifest,
        max_epochs=max_epochs,
        device=device,
        sets=parse_overrides(sets),
        verbose=verbose,
        echo=click.echo,
        init_from=init_from,
        freeze=freeze,
        pretrained_lr_scale=pretrained_lr_scale,
    )


@cli.command()
@bundle_option
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=str), help="Default: <bundle>/models/model.ts."
)
def export(bundle: str, output: str | None) -> None:
    """Export models/model.pt to TorchScript with MONAI's ckpt_export, and check it."""
    from medpipe.bundle.export import export_torchscript

    result = export_torchscript(bundle, output)
    click.echo(
        f"wrote {result['torchscript']}; TorchScript vs eager max |diff| = {result['max_abs_diff']:.2e} "
        f"on input {result['input_shape']}"
    )


@cli.command()
@bundle_option
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, path_type=str),
    help="Datalist to score (default: the bundle's).",
)
@click.option("--split", default="test", show_default=True, help="Manifest split to score (it needs labels).")
@click.option(
    "--output", type=click.Path(file_okay=False, path_type=str), help="Default: <bundle>/eval/<split>."
)
@click.option("--device", type=str, help="cpu, cuda or cuda:N.")
@click.option(
    "--nsd-tolerance", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True, help="mm."
)
@click.option(
    "--robustness",
    is_flag=True,
    help="Classifiers: re-score under noise, intensity shift/scale and rotation at graded strengths, with and "
    "without test-time augmentation (robustness.csv + .png).",
)
@click.option("--tta", type=click.IntRange(1, 48), default=8, show_default=True, help="--robustness: cube symmetries.")
def evaluate(
    bundle: str,
    manifest: str | None,
    split: str,
    output: str | None,
    device: str | None,
    nsd_tolerance: float,
    robustness: bool,
    tta: int,
) -> None:
    """Run the bundle's inference on a labelled split and score it.

    Segmentation bundles: per-case Dice, HD95 and surface Dice per class, in each case's original grid
    (metrics.csv, summary.json). Classifier bundles (metadata output type "probabilities"): AUC,
    accuracy, F1, precision, recall and confusion matrix at the stored threshold (predictions.csv,
    summary.json).
    """
    from medpipe.evaluate_cls import is_classifier

    if is_classifier(bundle):
        if robustness:
            from medpipe.robustness import robustness as run_robustness

            run_robustness(bundle, manifest=manifest, split=split, output=output, device=device, tta=tta, echo=click.echo)
            return
        from medpipe.evaluate_cls import evaluate_classifier

        evaluate_classifier(bundle, manifest=manifest, split=split, output=output, device=device, echo=click.echo)
        return
    if robustness:
        raise Code.ROBUSTNESS_UNSUPPORTED(
            f"--robustness is implemented for classifier bundles; {bundle} is a segmentation bundle",
        )
    from medpipe.evaluate import evaluate as run_evaluate

    run_evaluate(
        bundle, manifest=manifest, split=split, output=output, device=device, nsd_tolerance_mm=nsd_tolerance,
        echo=click.echo,
    )  # fmt: skip


@cli.command()
@bundle_option
def check(bundle: str) -> None:
    """Check a bundle with MONAI's tools: workflow properties and verify_net_in_out."""
    from monai.bundle import ConfigParser

    from medpipe.bundle.export import verify_network
    from medpipe.bundle.layout import BundleLayout
    from medpipe.bundle.workflow import missing_properties

    layout = BundleLayout.open(bundle)
    for workflow in ("train", "inference"):
        parser = ConfigParser()
        parser.read_config([str(p) for p in layout.workflow_configs(workflow)])
        missing = missing_properties(parser, "train" if workflow == "train" else "infer")
        if missing:
            raise Code.BUNDLE_MISSING_PROPERTIES(
                f"{workflow} workflow lacks the MONAI bundle properties {missing}",
            )
        click.echo(f"{workflow}: required MONAI bundle properties present")
    verify_network(layout.root)
    click.echo("verify_net_in_out: network input/output match metadata.json")
    if "crop_size" in parser:  # a crop classifier: the crop medpipe infer cuts must pass through the network
        from medpipe.bundle.classifier import check_crop_size

        parser["bundle_root"] = str(layout.root)
        crop = parser.get_parsed_content("crop_size")
        check_crop_size(
            parser.get_parsed_content("network_def"), crop, int(parser.get_parsed_content("num_classes"))
        )
        click.echo(f"crop_size {list(crop)}: the network takes it and returns one score per class")


@cli.command()
@bundle_option
@click.option(
    "--input",
    "input_path",
    required=True,
    type=str,
    help="NIfTI file or DICOM series folder (folder#id for one series of several).",
)
@click.option(
    "--output", required=True, type=click.Path(file_okay=False, path_type=str), help="Output folder."
)
@click.option("--method", type=click.Choice(["gradcam", "gradcampp"]), default="gradcam", show_default=True)
@click.option("--occlusion", is_flag=True, help="Also compute occlusion sensitivity (slower).")
@click.option("--target-layer", type=str, help="Module name for Grad-CAM (default: the last conv block).")
@click.option(
    "--class", "class_index", type=click.IntRange(min=0), help="Class to explain (default: predicted)."
)
@click.option("--device", type=str, help="cpu, cuda or cuda:N.")
def explain(
    bundle: str,
    input_path: str,
    output: str,
    method: str,
    occlusion: bool,
    target_layer: str | None,
    class_index: int | None,
    device: str | None,
) -> None:
    """Grad-CAM heat map (NIfTI on the input grid), PNG montage and class probabilities for one input."""
    from medpipe.explain import explain as run_explain

    run_explain(
        bundle, input_path, output, method=method, occlusion=occlusion, target_layer=target_layer,
        class_index=class_index, device=device, echo=click.echo,
    )  # fmt: skip


def assembly_options(func: Any) -> Any:
    """The options that let assembly repair a series instead of refusing it (shared by dicom commands)."""
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
    func = click.option(
        "--resample-gaps",
        is_flag=True,
        help="Interpolate across missing slices / uneven spacing instead of refusing.",
    )(func)
    return func


def _options(resample_gaps: bool, correct_tilt: bool, min_slices: int):
    from medpipe.dicom.geometry import AssemblyOptions

    return AssemblyOptions(min_slices=min_slices, resample_gaps=resample_gaps, correct_tilt=correct_tilt)


@cli.group()
def dicom() -> None:
    """Inspect DICOM folders: series discovery and validation (headers only)."""


@dicom.command("ls")
@click.argument("folder", type=click.Path(exists=True, path_type=str))
@click.option(
    "--json", "as_json", is_flag=True, help="Machine-readable output (includes unreadable file paths)."
)
@assembly_options
def dicom_ls(folder: str, as_json: bool, resample_gaps: bool, correct_tilt: bool, min_slices: int) -> None:
    """List the series under FOLDER (recursive): one row per stack, with its status or error code.

    Reads headers only, never pixel data. Series are named by a short hash of their UID; patient
    identity is never shown.
    """
    import json

    from medpipe.dicom.scan import scan

    result = scan(folder, _options(resample_gaps, correct_tilt, min_slices))
    rows = [s.summary() for s in result.stacks]
    if as_json:
        problems = [
            {"path": os.path.relpath(p.path, folder), "code": p.code, "message": p.message}
            for p in result.problems
        ]
        payload = {
            "files": result.n_files,
            "skipped": dict(result.skipped),
            "series": rows,
            "unreadable": problems,
        }
        click.echo(json.dumps(payload, indent=2))
    else:
        header = (
            f"{'ID':<13} {'MOD':<4} {'SLICES':>6}  {'DIMS':<13} {'SPACING mm':<22} {'ORIENTATION':<24} STATUS"
        )
        click.echo(header)
        for r in rows:
            dims = "x".join(str(d) for d in r["dims"])
            spacing = (
                "x".join("?" if v is None else f"{v:.3g}" for v in r["spacing"]) if r["spacing"] else "?"
            )
            click.echo(
                f"{r['id']:<13} {r['modality']:<4} {r['slices']:>6}  {dims:<13} {spacing:<22} "
                f"{r['orientation']:<24} {r['status']}"
            )
        for r in rows:
            for line in ([f"{r['status']}: {r['message']}"] if r["message"] else []) + r["notes"]:
                click.echo(f"  {r['id']}: {line}")
        skipped = ", ".join(f"{n} {why}" for why, n in result.skipped.items())
        summary = f"{result.n_files} files, {len(rows)} series"
        if result.problems:
            codes = ", ".join(f"{n} {c}" for c, n in Counter(p.code for p in result.problems).items())
            summary += f", {len(result.problems)} unreadable ({codes}; --json lists them)"
        click.echo(summary + (f", skipped: {skipped}" if skipped else ""))
    if not rows:
        raise Code.DICOM_NO_SERIES(result.nothing_usable_message())


@cli.command()
@click.argument("source", type=click.Path(exists=True, path_type=str))
@click.option(
    "--output", "-o", required=True, type=click.Path(file_okay=False, path_type=str), help="Output folder."
)
@click.option("--series", multiple=True, metavar="ID", help="Convert only these series ids (repeatable).")
@assembly_options
def convert(
    source: str,
    output: str,
    series: tuple[str, ...],
    resample_gaps: bool,
    correct_tilt: bool,
    min_slices: int,
) -> None:
    """Convert a DICOM folder to one NIfTI per series (+ JSON sidecar), or validate and copy a NIfTI.

    Writes <id>.nii.gz, <id>.json and conversion.json (every series with its status). Exit status 0 when
    everything converted, 4 when some series were refused (see conversion.json), 3 when nothing was.
    """
    from medpipe.convert import convert as run_convert

    records = run_convert(
        source,
        output,
        series=series,
        options=_options(resample_gaps, correct_tilt, min_slices),
        echo=click.echo,
    )
    ok = sum(r.status == "ok" for r in records)
    click.echo(f"{ok} of {len(records)} converted into {output} (report: conversion.json)")
    if ok == 0:
        failed = records[0] if records else None
        raise Code(failed.status if failed else Code.DICOM_NO_SERIES)(
            f"nothing converted{f' ({failed.source}: {failed.status})' if failed else ''}"
        )
    if ok < len(records):
        sys.exit(EXIT_PARTIAL)


@cli.command()
@bundle_option
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, path_type=str),
              help="DICOM folder tree, NIfTI file, or folder of NIfTI files.")  # fmt: skip
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False, path_type=str))
@click.option("--classifier", type=click.Path(file_okay=False, path_type=str),
              help="Classifier bundle: adds its probability for a crop around each lesion.")  # fmt: skip
@click.option("--format", "formats", default="nifti,dicom-seg", show_default=True,
              help="Mask formats, comma-separated: nifti, dicom-seg.")  # fmt: skip
@click.option("--select", multiple=True, metavar="modality=CT",
              help="Process only these modalities (default: the bundle's input modality).")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=1), help="CPU threads (torch, header reading).")
@click.option("--device", type=str, help="cpu, cuda or cuda:N.")
@set_option
@assembly_options
def infer(
    bundle: str,
    input_path: str,
    output: str,
    classifier: str | None,
    formats: str,
    select: tuple[str, ...],
    workers: int | None,
    device: str | None,
    sets: tuple[str, ...],
    resample_gaps: bool,
    correct_tilt: bool,
    min_slices: int,
) -> None:
    """Run a segmentation bundle on every series of INPUT: mask, DICOM SEG, lesion table, preview.

    Writes OUT/<id>/ per series and results.csv, lesions.csv, failures.csv, summary.json. Re-running
    skips series already done with the same bundle and input. Exit status 0 when every series
    succeeded, 4 when some failed (failures.csv), 3 when none could be processed.
    """
    from medpipe.bundle.overrides import parse_overrides
    from medpipe.infer.run import infer as run_infer

    overrides = parse_overrides(sets)
    summary = run_infer(
        bundle, input_path, output, classifier=classifier, formats=formats.split(","), select=select,
        workers=workers, device=device, overrides=overrides, user_ids=list(overrides),
        options=_options(resample_gaps, correct_tilt, min_slices), echo=click.echo,
    )  # fmt: skip
    if summary["done"] + summary["skipped"] == 0:
        raise Code.INFER_NOTHING_DONE(
            f"no series could be processed ({', '.join(summary['failures']) or 'nothing found'}); see "
            f"{os.path.join(output, 'failures.csv')}",
        )
    if summary["failed"] or summary["unreadable_files"]:
        sys.exit(EXIT_PARTIAL)


@cli.group()
def manifest() -> None:
    """Write a manifest (Decathlon datalist with fixed splits) from a dataset."""


def manifest_output_options(func: Any) -> Any:
    """--output and --val-fraction, shared by the manifest commands."""
    func = click.option(
        "--val-fraction",
        type=click.FloatRange(0, 1, min_open=True, max_open=True),
        default=0.1,
        show_default=True,
        help="Share of the non-test cases used for validation.",
    )(func)
    return click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=str))(func)


def _report_manifest(content: dict[str, Any], output: str) -> None:
    counts = ", ".join(f"{k} {len(content[k])}" for k in ("training", "validation", "test") if k in content)
    click.echo(f"wrote {output}: {counts} (dataset_dir {content['dataset_dir']})")


@manifest.command("msd")
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=str))
@manifest_output_options
@click.option(
    "--folds", type=click.IntRange(min=2), help="Assign k folds to the non-test cases; validate on --fold."
)
@click.option("--fold", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def manifest_msd(
    dataset_dir: str, output: str, val_fraction: float, folds: int | None, fold: int, seed: int
) -> None:
    """From an MSD task folder (dataset.json): test = cases whose number is divisible by 5."""
    from medpipe.data.make_manifest import msd_manifest

    content = msd_manifest(dataset_dir, output, val_fraction=val_fraction, folds=folds, fold=fold, seed=seed)
    _report_manifest(content, output)


@manifest.command("folder")
@click.argument("images_dir", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.argument("labels_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=str))
@manifest_output_options
@click.option("--test-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def manifest_folder(
    images_dir: str, labels_dir: str | None, output: str, val_fraction: float, test_fraction: float, seed: int
) -> None:
    """From a folder of NIfTI images (and one of labels, paired by file name)."""
    from medpipe.data.make_manifest import folder_manifest

    content = folder_manifest(
        images_dir, output, labels_dir, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
    )
    _report_manifest(content, output)


@manifest.command("medmnist")
@click.argument("npz", type=click.Path(dir_okay=False, path_type=str))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=str))
@click.option(
    "--num-classes",
    type=click.IntRange(min=2),
    help="Number of classes (default: from the dataset name, e.g. vesselmnist3d -> 2).",
)
@click.option(
    "--nifti-dir",
    type=click.Path(file_okay=False, path_type=str),
    help="Write one NIfTI per case here and point the manifest at them (default: read the npz directly).",
)
def manifest_medmnist(npz: str, output: str, num_classes: int | None, nifti_dir: str | None) -> None:
    """From a MedMNIST 3D archive (*mnist3d*.npz): its official train/val/test splits."""
    from medpipe.data.medmnist import medmnist_manifest

    content = medmnist_manifest(npz, output, num_classes=num_classes, nifti_dir=nifti_dir)
    _report_manifest(content, output)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    from medpipe import quiet_third_party_logs

    quiet_third_party_logs()
    try:
        cli.main(args=argv, prog_name="medpipe")
    except MedpipeError as e:  # raised outside a command's invoke (rare)
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_INPUT_ERROR)


if __name__ == "__main__":
    main()
