"""How the CLI shows a failure: one line, `Error: <detail> (<code>)`, exit status 1."""
from __future__ import annotations

import click

from hub.config import client_token
from hub.errors import HubError, Unauthorized

_TOKEN_HINT = ("set LORASTACK_TOKEN to a token printed by `lorastack users create NAME` or "
               "`lorastack tokens create NAME`, run on the hub's machine with the hub's "
               "LORASTACK_DATA_DIR")


def describe(error: HubError) -> str:
    """The one line for `error`: what went wrong, what to do, and its code."""
    if isinstance(error, Unauthorized):
        if client_token() is None:
            return f"LORASTACK_TOKEN is not set and this needs a token: {_TOKEN_HINT} ({error.code})"
        return f"the hub refused the token ({error.detail}): {_TOKEN_HINT} ({error.code})"
    return f"{error.detail} ({error.code})"


class HubGroup(click.Group):
    """A command group whose subcommands' HubErrors end as one line, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HubError as error:
            raise click.ClickException(describe(error)) from None


class OneLineCommand(click.Command):
    """Usage errors (bad option values, a missing -o) as one line, like every other refusal."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise click.ClickException(exc.format_message()) from None
