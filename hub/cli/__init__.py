"""The `lorastack` command. Subcommands live in small modules; heavy imports stay lazy."""
from __future__ import annotations

import click

from hub import __version__
from hub.cli import client, merge_local, merge_remote, merges, server
from hub.cli.errors import HubGroup


@click.group(cls=HubGroup)
@click.version_option(__version__, prog_name="lorastack")
def main() -> None:
    """lorastack: a registry and merge hub for LoRA adapters."""


main.add_command(merge_local.merge_local)
main.add_command(merge_remote.merge_command)
main.add_command(merges.merges_group)
server.register(main)
client.register(main)
