"""The ``medpipe`` command line: one module per command group, each a thin layer over a package.

Commands parse options and call one package function; checks, tables and exit-status rules live in
the packages. Heavy imports (torch, MONAI) happen inside commands so ``medpipe --help`` is instant. A
:class:`~medpipe.errors.MedpipeError` -- bad input or config -- ends the command with one line,
``error: CODE: message``, and exit status 3; click's usage errors exit 2; anything else is a bug and
shows its traceback.

Exit status: 0 success, 1 unexpected error (a bug), 2 usage error, 3 bad input or config, 4 partial
(a batch command did some items and recorded coded failures for others).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from medpipe import __version__
from medpipe.cli.dicom import convert, dicom
from medpipe.cli.evaluate import evaluate, explain
from medpipe.cli.infer import infer
from medpipe.cli.manifest import manifest
from medpipe.cli.train import check, export, promote, train
from medpipe.cli.trust import trust
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


@click.group(cls=MedpipeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medpipe")
def cli() -> None:
    """medpipe: DICOM-aware MONAI bundles for 3D CT and MRI."""


for command in (train, promote, export, check, evaluate, explain, infer, convert, dicom, manifest, trust):
    cli.add_command(command)


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
