"""``medpipe manifest``: a datalist with fixed splits from an MSD task, a NIfTI folder or a MedMNIST archive."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


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
