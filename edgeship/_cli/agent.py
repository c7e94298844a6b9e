"""``edgeship agent run --config agent.toml``: the device daemon (thin: parse, call, exit)."""

from __future__ import annotations

from pathlib import Path

import click

from edgeship._cli._options import verbose_option


@click.group()
def agent() -> None:
    """The device agent: serves the model, takes signed updates over MQTT."""


@agent.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="agent.toml (see agent/agent.example.toml)")
@verbose_option
def run(config_path: Path) -> None:
    """Run the agent until SIGTERM / Ctrl-C."""
    from edgeship.agent._config import load_config
    from edgeship.agent._daemon import run_agent

    run_agent(load_config(config_path))
