"""``medpipe dicom ls`` and ``medpipe convert``: what a DICOM folder holds, and its series as NIfTI."""

from __future__ import annotations

import json
import sys

import click

from medpipe.cli.options import assembly, assembly_options, show_paths_option


@click.group()
def dicom() -> None:
    """Inspect DICOM folders: series discovery and validation (headers only)."""


@dicom.command("ls")
@click.argument("folder", type=click.Path(exists=True, path_type=str))
@click.option(
    "--json", "as_json", is_flag=True, help="Machine-readable output (unreadable files by hashed id)."
)
@show_paths_option
@assembly_options
def dicom_ls(
    folder: str, as_json: bool, show_paths: bool, resample_gaps: bool, correct_tilt: bool, min_slices: int
) -> None:
    """List the series under FOLDER (recursive): one row per stack, with its status or error code.

    Reads headers only, never pixel data. Series are named by a short hash of their UID and files by
    a hash of their path; patient identity and paths are never shown (paths with --show-paths).
    """
    from medpipe.dicom.listing import listing, table
    from medpipe.dicom.scan import scan
    from medpipe.errors import Code

    result = scan(folder, assembly(resample_gaps, correct_tilt, min_slices))
    if as_json:
        click.echo(json.dumps(listing(result, show_paths=show_paths), indent=2))
    else:
        for line in table(result):
            click.echo(line)
    if not result.stacks:
        raise Code.DICOM_NO_SERIES(result.nothing_usable_message())


@click.command()
@click.argument("source", type=click.Path(exists=True, path_type=str))
@click.option(
    "--output", "-o", required=True, type=click.Path(file_okay=False, path_type=str), help="Output folder."
)
@click.option("--series", multiple=True, metavar="ID", help="Convert only these series ids (repeatable).")
@show_paths_option
@assembly_options
def convert(
    source: str,
    output: str,
    series: tuple[str, ...],
    show_paths: bool,
    resample_gaps: bool,
    correct_tilt: bool,
    min_slices: int,
) -> None:
    """Convert a DICOM folder to one NIfTI per series (+ JSON sidecar), or validate and copy a NIfTI.

    Writes <id>.nii.gz, <id>.json and conversion.json (every series with its status). Exit status 0 when
    everything converted, 4 when some series were refused (see conversion.json), 3 when nothing was.
    """
    from medpipe.convert import convert as run_convert
    from medpipe.convert import outcome

    records = run_convert(
        source, output, series=series, options=assembly(resample_gaps, correct_tilt, min_slices),
        show_paths=show_paths, echo=click.echo,
    )  # fmt: skip
    click.echo(
        f"{sum(r.status == 'ok' for r in records)} of {len(records)} converted into {output} (report: conversion.json)"
    )
    status = outcome(records)
    if status:
        sys.exit(status)
