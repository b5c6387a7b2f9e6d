"""The ``pmpc`` command. Thin: each subcommand module parses its options, calls the library, prints.

Subcommand modules live beside this file and export ``COMMANDS`` (a list of click commands or
groups); they are registered here in a fixed order. Each command imports the library inside its
function: ``pmpc --help`` stays fast, and a machine without crypten (a GPU box) runs every command
that needs none.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from pmpc import logs

MODULES = ("run", "protocols_cmd", "bench", "eval", "sweep", "align", "deploy")


class _Group(click.Group):
    def invoke(self, ctx):
        """Library errors meant for the user become one line on stderr and exit code 2."""
        from pmpc.errors import UserError

        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"pmpc: error: {e}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pmpc")
def cli():
    """pmpc: private LLM inference under real 2-party MPC, and what its approximations do to safety."""


for _name in MODULES:
    if importlib.util.find_spec(f"cli.{_name}") is not None:
        for _cmd in importlib.import_module(f"cli.{_name}").COMMANDS:
            cli.add_command(_cmd)


def main():
    logs.show()   # the library's progress messages, on stdout as the CLI's own
    cli()


if __name__ == "__main__":
    main()
