"""The ``medpipe`` command line.

Heavy imports (torch, MONAI) happen inside commands so ``medpipe --help`` is instant. A
:class:`~medpipe.errors.MedpipeError` -- bad input or config -- ends the command with one line,
``error: CODE: message``, and exit status 3; click's usage errors exit 2; anything else is a bug and
shows its traceback.

Exit status: 0 success, 1 unexpected error (a bug), 2 usage error, 3 bad input or config.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from medpipe import __version__
from medpipe.errors import EXIT_INPUT_ERROR, MedpipeError, find_medpipe_error


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
@click.option("-v", "--verbose", is_flag=True, help="Also apply the bundle's logging.conf (MONAI's own logs).")
def train(
    bundle: str, manifest: str | None, max_epochs: int | None, device: str | None, sets: tuple[str, ...], verbose: bool
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
    )


@cli.command()
@bundle_option
@click.option("--output", type=click.Path(dir_okay=False, path_type=str), help="Default: <bundle>/models/model.ts.")
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
            raise MedpipeError(
                f"{workflow} workflow lacks the MONAI bundle properties {missing}", code="BUNDLE_MISSING_PROPERTIES"
            )
        click.echo(f"{workflow}: required MONAI bundle properties present")
    verify_network(layout.root)
    click.echo("verify_net_in_out: network input/output match metadata.json")


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
