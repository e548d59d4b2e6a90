"""The `bulkdrive` command: upload, serve, status, bench."""

from __future__ import annotations

import click

from bulkdrive.emulator.command import serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bulkdrive")
def main() -> None:
    """Upload directory trees to Commvault Edge Drive shares, fast and safely."""


main.add_command(serve)
