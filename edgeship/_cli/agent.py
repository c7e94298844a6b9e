"""``edgeship agent run --config agent.toml``: the device daemon; ``edgeship agent check
--config agent.toml``: validate a config; ``edgeship agent install FILE.esb --config
agent.toml``: an offline bundle through the OTA path (thin: parse, call, exit)."""

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
    from edgeship.agent._boot import run_agent
    from edgeship.agent._config import load_config

    run_agent(load_config(config_path))


@agent.command("check")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="agent.toml to validate")
def check(config_path: Path) -> None:
    """Validate a config: every error and warning, exit 1 on errors."""
    from edgeship.agent._check import check_config

    errors, warnings = check_config(config_path)
    for text in warnings:
        click.echo(f"warning: {text}", err=True)
    for text in errors:
        click.echo(f"error: {text}", err=True)
    if errors:
        raise SystemExit(1)
    click.echo(f"ok: {config_path}")


@agent.command("install")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="the device's agent.toml")
@click.option("--json", "as_json", is_flag=True, help="one JSON line on stdout")
def install(bundle: Path, config_path: Path, as_json: bool) -> None:
    """Install an offline bundle (edgeship release bundle) with the agent stopped.

    Exactly an OTA update's checks and steps: signature, key set, version floor, model
    and hardware, then download from the bundle, payload hash, slot, health check and
    switch, rolled back if the new model fails. Exit 0 installed (or already active).
    """
    import json

    from edgeship.agent._config import load_config
    from edgeship.agent._install import install_bundle

    result = install_bundle(load_config(config_path), bundle)
    if as_json:
        click.echo(json.dumps(result.to_json()))
    elif result.already:
        click.echo(f"{result.version} is already the active model; nothing to do")
    else:
        click.echo(f"installed {result.version} (slot {result.slot}); it serves at the "
                   "agent's next start")



@agent.command("wipe-examples")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="agent.toml of the device")
def wipe_examples(config_path: Path) -> None:
    """Remove every example [learning] kept on this device.

    The agent may be running. Its recent answers kept in memory for feedback by id go
    with DELETE /v2/models/<name>/examples instead."""
    from edgeship.agent._config import load_config
    from edgeship.agent._learning import LearningConfig
    from edgeship.sdk.learning._store import ExampleStore

    config = load_config(config_path)
    directory = (config.learning or LearningConfig()).store_dir(config.data_dir)
    removed = ExampleStore(directory).wipe() if directory.is_dir() else 0
    click.echo(f"removed {removed} examples from {directory}")
