"""``medpipe trust``: let a bundle from elsewhere run here, after reading what it would run."""

from __future__ import annotations

import click


@click.command()
@click.argument("bundle", required=False, type=click.Path(file_okay=False, exists=True, path_type=str))
@click.option("--list", "list_", is_flag=True, help="List the bundles trusted here.")
@click.option("--revoke", is_flag=True, help="Forget BUNDLE: it is refused again.")
def trust(bundle: str | None, list_: bool, revoke: bool) -> None:
    """Trust BUNDLE's configs (by their sha256) in the user's trust store, after listing what in them runs code.

    A changed config file is no longer trusted. Bundles shipped with medpipe are trusted already."""
    from pathlib import Path

    from medpipe.bundle import trust as store
    from medpipe.errors import Code

    if list_:
        entries = store.read_store()["bundles"]
        for path, entry in sorted(entries.items()):
            click.echo(f"{path}  ({len(entry['files'])} files, {entry.get('findings', '?')} findings, {entry['trusted_at']})")
        click.echo(f"{len(entries)} bundle(s) trusted in {store.store_path()}")
        return
    if bundle is None:
        raise Code.OPTION_INVALID("medpipe trust needs a BUNDLE folder (or --list)")
    root = Path(bundle)
    if revoke:
        done = store.revoke(root)
        click.echo(f"{root}: {'no longer trusted' if done else 'was not trusted'} ({store.store_path()})")
        return
    found = store.bundle_findings(root)
    for f in found:
        click.echo(f"  {f.line()}")
    entry = store.trust(root)
    click.echo(f"{root}: {len(entry['files'])} files trusted ({len(found)} finding(s) above) in {store.store_path()}")
