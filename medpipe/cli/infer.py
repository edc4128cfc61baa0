"""``medpipe infer``: a segmentation bundle over every series of a folder, with a report for each."""

from __future__ import annotations

import sys

import click

from medpipe.cli.options import (
    assembly,
    assembly_options,
    backend_option,
    bundle_option,
    device_option,
    precision_option,
    set_option,
    show_paths_option,
    trust_bundle_option,
    weights_option,
)


@click.command()
@bundle_option
@trust_bundle_option
@click.option("--input", "input_path", type=click.Path(exists=True, path_type=str),
              help="DICOM folder tree, NIfTI file, or folder of NIfTI files (or --source).")  # fmt: skip
@click.option("--source", metavar="dicomweb+http(s)://HOST:PORT/PATH",
              help="A DICOMweb archive instead of --input (or dimse://HOST:PORT/AET): the studies of --study/--query "
              "(docs/pacs.md). "
              "Credentials: MEDPIPE_DICOMWEB_USER/_PASSWORD or _TOKEN, or --pacs-config; never in the URL.")  # fmt: skip
@click.option("--study", "studies", multiple=True, metavar="UID", help="--source: a StudyInstanceUID (repeatable).")
@click.option("--query", metavar="KEY=VALUE&...",
              help="--source: the studies a QIDO-RS search matches, e.g. 'ModalitiesInStudy=CT&StudyDate=20260101-'.")  # fmt: skip
@click.option("--push", is_flag=True, help="--source: store each SEG back in the archive (STOW-RS), retried, recorded.")
@click.option("--pacs-config", type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="JSON file: url, username/password or token, ca_bundle, client_cert/client_key, timeout_s, "
              "attempts, retry_wait_s (mode 600 when it holds a secret).")  # fmt: skip
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="--source over https: the CA certificates (PEM) that verify the archive.")  # fmt: skip
@click.option("--insecure", is_flag=True, help="--source over https without verifying the certificate (test archives only).")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False, path_type=str))
@click.option("--classifier", type=click.Path(file_okay=False, path_type=str),
              help="Classifier bundle: adds its probability for a crop around each lesion.")  # fmt: skip
@click.option("--format", "formats", default="nifti,dicom-seg", show_default=True,
              help="Mask formats, comma-separated: nifti, dicom-seg.")  # fmt: skip
@click.option("--select", multiple=True, metavar="modality=CT",
              help="Process only these modalities (default: the bundle's input modality).")  # fmt: skip
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads: torch's (per worker with --workers/--scheduler) and DICOM header reading.")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=1),
              help="Run the series on a local Dask cluster of N worker processes (one series each at a time).")  # fmt: skip
@click.option("--scheduler", metavar="tcp://HOST:PORT",
              help="Send the series to a running Dask cluster; its workers must see the bundle, --input and "
              "--output at the same paths.")  # fmt: skip
@click.option("--shard", metavar="K/N",
              help="Only shard K of N of the series (a hash of each series id), e.g. one per SLURM array task; "
              "its reports are results-K-of-N.csv...; a run without --shard afterwards gathers them.")  # fmt: skip
@click.option("--anonymize-seg", is_flag=True,
              help="DICOM SEG: replace the patient and study identity (name, ID, birth date, accession number, "
              "referring physician...) by a keyed pseudonym, anon-<hash of the PatientID>; the key is "
              "OUT/pseudonym.key (docs/inference.md).")  # fmt: skip
@device_option
@backend_option
@precision_option
@weights_option
@set_option
@show_paths_option
@assembly_options
def infer(
    bundle: str,
    input_path: str | None,
    source: str | None,
    studies: tuple[str, ...],
    query: str | None,
    push: bool,
    pacs_config: str | None,
    ca_bundle: str | None,
    insecure: bool,
    output: str,
    classifier: str | None,
    formats: str,
    select: tuple[str, ...],
    threads: int | None,
    workers: int | None,
    scheduler: str | None,
    shard: str | None,
    anonymize_seg: bool,
    device: str | None,
    backend: str | None,
    precision: str | None,
    weights: str | None,
    sets: tuple[str, ...],
    show_paths: bool,
    resample_gaps: bool,
    correct_tilt: bool,
    min_slices: int,
) -> None:
    """Run a segmentation bundle on every series of INPUT (or of a DICOMweb archive's studies, --source):
    mask, DICOM SEG, lesion table, preview; with --push the SEGs go back to the archive.

    Writes OUT/<id>/ per series and results.csv, lesions.csv, failures.csv, summary.json. Re-running
    skips series already done with the same bundle, weights and input. Series run one after another,
    or on Dask with --workers N (this machine) or --scheduler (a running cluster). Exit status 0 when
    every series succeeded, 4 when some failed (failures.csv), 3 when none could be processed.
    """
    from medpipe.bundle.overrides import parse_overrides
    from medpipe.infer.run import InferOptions, outcome
    from medpipe.infer.run import infer as run_infer
    from medpipe.pacs.run import PacsOptions, check_input_or_source, infer_pacs

    pacs = PacsOptions(source, studies, query, push, pacs_config, ca_bundle, insecure)
    from_archive = check_input_or_source(input_path, pacs)
    overrides = parse_overrides(sets)
    options = InferOptions(
        formats=tuple(formats.split(",")), select=select, classifier=classifier, weights=weights, threads=threads,
        workers=workers, scheduler=scheduler, device=device, overrides=overrides, user_ids=tuple(overrides),
        assembly=assembly(resample_gaps, correct_tilt, min_slices), show_paths=show_paths, shard=shard,
        anonymize_seg=anonymize_seg, backend=backend, precision=precision,
    )  # fmt: skip
    if from_archive:
        status = infer_pacs(bundle, output, options, pacs, echo=click.echo)[1]
    else:
        status = outcome(run_infer(bundle, input_path, output, options, echo=click.echo), output)
    if status:
        sys.exit(status)
