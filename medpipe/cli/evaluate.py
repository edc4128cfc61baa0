"""``medpipe evaluate`` and ``explain``: how good a bundle is on labelled data, and where it looked."""

from __future__ import annotations

import click

from medpipe.cli.options import (
    backend_option,
    bundle_option,
    device_option,
    precision_option,
    show_paths_option,
    trust_bundle_option,
    weights_option,
)


@click.command()
@bundle_option
@trust_bundle_option
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, path_type=str),
    help="Datalist to score (default: the bundle's).",
)
@click.option("--split", default="test", show_default=True, help="Manifest split to score (it needs labels).")
@click.option(
    "--output", type=click.Path(file_okay=False, path_type=str), help="Default: <bundle>/eval/<split>."
)
@device_option
@backend_option
@precision_option
@weights_option
@click.option(
    "--nsd-tolerance", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True, help="mm."
)
@click.option(
    "--robustness",
    is_flag=True,
    help="Classifiers: re-score under noise, intensity shift/scale and rotation at graded strengths, with and "
    "without test-time augmentation (robustness.csv + .png).",
)
@click.option(
    "--tta", type=click.IntRange(1, 48), default=8, show_default=True, help="--robustness: cube symmetries."
)
@click.option("--min-readers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Lesion bundles: nodules marked by fewer readers are neither targets nor false positives.")  # fmt: skip
@click.option("--choose-operating-point", "choose_fp", type=click.FloatRange(min=0), metavar="FP",
              help="Lesion bundles: choose the score threshold with at most this many false positives per scan on "
              "this split and store it beside --weights (a run; promote ships it).")  # fmt: skip
@click.option("--classifier", type=click.Path(exists=True, file_okay=False, path_type=str), metavar="BUNDLE",
              help="Lesion bundles: add this classifier's probability for each found nodule to "
              "lesions_vs_readers.csv, as medpipe infer --classifier computes it.")  # fmt: skip
@show_paths_option
def evaluate(
    bundle: str,
    manifest: str | None,
    split: str,
    output: str | None,
    device: str | None,
    backend: str | None,
    precision: str | None,
    weights: str | None,
    nsd_tolerance: float,
    robustness: bool,
    tta: int,
    min_readers: int,
    choose_fp: float | None,
    classifier: str | None,
    show_paths: bool,
) -> None:
    """Score the bundle's shipped prediction path on a labelled split.

    Segmentation bundles: per-case Dice, HD95 and surface Dice per class, in each case's original grid
    (metrics.csv, summary.json). Classifier bundles (metadata output type "probabilities"): AUC,
    accuracy, F1, precision, recall and confusion matrix at the stored threshold (predictions.csv,
    summary.json). Lesion bundles are also scored as detectors: per-nodule sensitivity, false positives
    per scan, FROC and the LUNA16 score (detection.csv, candidates.csv, froc.csv, froc.png), and each
    reader-marked nodule next to the lesion found there (lesions_vs_readers.csv). Cases are
    named by their manifest case_id or a hash of their path (--show-paths adds it).
    """
    if robustness:
        from medpipe.evaluate.robustness import robustness as run_robustness

        run_robustness(
            bundle, manifest=manifest, split=split, output=output, device=device, weights=weights, tta=tta,
            echo=click.echo,
        )  # fmt: skip
        return
    from medpipe.evaluate import evaluate as run_evaluate

    run_evaluate(
        bundle, manifest=manifest, split=split, output=output, device=device, weights=weights,
        nsd_tolerance_mm=nsd_tolerance, show_paths=show_paths, min_readers=min_readers, choose_fp_per_scan=choose_fp,
        classifier=classifier, backend=backend, precision=precision, echo=click.echo,
    )  # fmt: skip


@click.command()
@bundle_option
@trust_bundle_option
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
@device_option
@weights_option
@show_paths_option
def explain(
    bundle: str,
    input_path: str,
    output: str,
    method: str,
    occlusion: bool,
    target_layer: str | None,
    class_index: int | None,
    device: str | None,
    weights: str | None,
    show_paths: bool,
) -> None:
    """Grad-CAM heat map (NIfTI on the input grid), PNG montage and class probabilities for one input."""
    from medpipe.explain import explain as run_explain

    run_explain(
        bundle, input_path, output, method=method, occlusion=occlusion, target_layer=target_layer,
        class_index=class_index, device=device, weights=weights, show_paths=show_paths, echo=click.echo,
    )  # fmt: skip
