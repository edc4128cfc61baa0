"""``medpipe manifest``: a datalist with fixed splits from an MSD task, a NIfTI folder or a MedMNIST archive."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from medpipe.errors import EXIT_PARTIAL


@click.group()
def manifest() -> None:
    """Write a manifest (Decathlon datalist with fixed splits) from a dataset."""


def output_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--output and --val-fraction, shared by the manifest commands."""
    func = click.option(
        "--val-fraction",
        type=click.FloatRange(0, 1, min_open=True, max_open=True),
        default=0.1,
        show_default=True,
        help="Share of the non-test cases used for validation.",
    )(func)
    return click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=str))(func)


def _report(content: dict[str, Any], output: str) -> None:
    counts = ", ".join(f"{k} {len(content[k])}" for k in ("training", "validation", "test") if k in content)
    click.echo(f"wrote {output}: {counts} (dataset_dir {content['dataset_dir']})")


@manifest.command("msd")
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=str))
@output_options
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

    _report(
        msd_manifest(dataset_dir, output, val_fraction=val_fraction, folds=folds, fold=fold, seed=seed),
        output,
    )


@manifest.command("folder")
@click.argument("images_dir", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.argument("labels_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=str))
@output_options
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
    _report(content, output)


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

    _report(medmnist_manifest(npz, output, num_classes=num_classes, nifti_dir=nifti_dir), output)


@manifest.command("lidc")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=str))
@output_options
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=str),
              help="Where images, masks and nodule records go (default: lidc_data/ beside the manifest).")  # fmt: skip
@click.option("--agreement", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="Consensus: share of a nodule's readers that must mark a voxel.")  # fmt: skip
@click.option("--min-readers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Nodules marked by fewer readers stay out of the training label (they stay in the records).")  # fmt: skip
@click.option(
    "--hold-out", multiple=True, metavar="PATIENT", help="A patient that goes to test whatever the draw."
)
@click.option("--test-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def manifest_lidc(
    root: str, output: str, val_fraction: float, data_dir: str | None, agreement: float, min_readers: int,
    hold_out: tuple[str, ...], test_fraction: float, seed: int,
) -> None:  # fmt: skip
    """From LIDC-IDRI in TCIA's layout (<patient>/<study>/<series>/ with the reader XML): images,
    consensus masks, nodule records and a datalist split by patient (nodules.csv beside it)."""
    from medpipe.data.lidc.dataset import lidc_manifest

    content = lidc_manifest(
        root, output, data_dir=data_dir, agreement=agreement, min_readers=min_readers,
        val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, hold_out=hold_out, echo=click.echo,
    )  # fmt: skip
    _report(content, output)
    if content["failures"]:  # some series refused (listed in the manifest): a partial result
        sys.exit(EXIT_PARTIAL)


@manifest.command("crops")
@click.argument("images_dir", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.argument("table", type=click.Path(exists=True, dir_okay=False, path_type=str))
@output_options
@click.option("--masks", "masks_dir", type=click.Path(exists=True, file_okay=False, path_type=str),
              help="Folder of the crops' masks (same names).")  # fmt: skip
@click.option("--name-format", default="{patient_id}_R_{nodule_id}", show_default=True,
              help="A crop's file name (without .nii.gz) from the row's columns.")  # fmt: skip
@click.option("--label-column", default="Diagnosis", show_default=True)
@click.option(
    "--classes", help="Label values in class order, comma-separated (default: sorted), e.g. Benign,Malign."
)
@click.option("--patient-column", default="patient_id", show_default=True, help="Splits are by this column.")
@click.option(
    "--keep", "keep_columns", multiple=True, metavar="COLUMN", help="Copy a column into the entries."
)
@click.option(
    "--hold-out", multiple=True, metavar="PATIENT", help="A patient that goes to test whatever the draw."
)
@click.option("--test-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def manifest_crops(
    images_dir: str, table: str, output: str, val_fraction: float, masks_dir: str | None, name_format: str,
    label_column: str, classes: str | None, patient_column: str, keep_columns: tuple[str, ...],
    hold_out: tuple[str, ...], test_fraction: float, seed: int,
) -> None:  # fmt: skip
    """From a folder of crops and a table with one row per crop (e.g. lidc_nodule_vois): a classifier
    datalist split by patient."""
    from medpipe.data.make_manifest import crops_manifest

    content = crops_manifest(
        images_dir, table, output, masks_dir=masks_dir, name_format=name_format, label_column=label_column,
        classes=classes.split(",") if classes else None, patient_column=patient_column, keep_columns=keep_columns,
        hold_out=hold_out, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
    )  # fmt: skip
    _report(content, output)
    if content["skipped"]:
        click.echo(
            f"{len(content['skipped'])} row(s) name no crop and were left out: {', '.join(content['skipped'][:5])}"
        )


@manifest.command("paste")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder for image/, label/ and manifest.json.")  # fmt: skip
def paste(recipe: str, output: str) -> None:
    """Paste real nodule crops into the lung fields of real chest CTs (a segmenter's training data).

    RECIPE names the hosts (chest CTs, a slab of slices and a split each), the crops manifest (its
    training / validation patients feed those splits, its test patients none) and the grid; see
    data_manifests/lung_nodule_ct_pasted.recipe.json and medpipe.data.paste.
    """
    from medpipe.data.paste import build_pasted

    content = build_pasted(recipe, output, echo=click.echo)
    counts = {s: len(content[s]) for s in ("training", "validation")}
    click.echo(f"wrote {output}/manifest.json: {counts}, crops used {content['crops_used']}")
