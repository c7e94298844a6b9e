"""Entry point of the ``edgeship`` command: a lazy click group plus one error boundary.

Every :class:`~edgeship.EdgeshipError` that escapes a command becomes one line on stderr
and exit code 2; anything else becomes one line and exit code 1, never a traceback
(set ``EDGESHIP_DEBUG=1`` to see the traceback).
"""

from __future__ import annotations

import importlib
import sys

import click

from edgeship import __version__
from edgeship._cli._options import verbose_option
from edgeship._cli.entry import run_guarded

# command name -> "module:attribute"; the module is imported only when the command runs.
_COMMANDS: dict[str, str] = {
    "convert": "edgeship._cli.convert:convert",
    "keys": "edgeship._cli.release:keys",
    "learn": "edgeship._cli.learn:learn",
    "release": "edgeship._cli.release:release",
    "verify": "edgeship._cli.release:verify",
    "broker": "edgeship._cli.broker:broker",
    "fleet": "edgeship._cli.fleet:fleet",
    "agent": "edgeship._cli.agent:agent",
    "cloud": "edgeship._cli.cloud:cloud",
    "bench": "edgeship._cli.bench:bench",
    "demo": "edgeship._cli.demo:demo",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            return _unavailable(cmd_name)
        command: click.Command = getattr(module, attr)
        return command


def _unavailable(name: str) -> click.Command:
    @click.command(name=name, help="(not available in this build)")
    def command() -> None:
        raise click.ClickException(f"'edgeship {name}' is not available in this build")

    return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeship")
@verbose_option
def cli() -> None:
    """edgeship: convert, sign, ship and serve INT8 models on a fleet of small devices."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI with the one error boundary described in the module docstring."""
    sys.exit(run_guarded(lambda: _run_click(argv)))


def _run_click(argv: list[str] | None) -> int:
    """The click tree's exit code; its own errors (usage, abort) as one line here."""
    try:
        exit_code = cli.main(args=argv, prog_name="edgeship", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return exc.exit_code
    return exit_code if isinstance(exit_code, int) else 0


if __name__ == "__main__":
    main()
