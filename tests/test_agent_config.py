"""agent.toml: the documented example loads; each bad value names its key."""

from __future__ import annotations

from pathlib import Path

import pytest
from edgeship.agent._config import load_config

from edgeship import ConfigError

EXAMPLE = Path(__file__).parents[1] / "agent" / "agent.example.toml"


def test_example_config_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.device_id and cfg.fleet
    assert cfg.api.host == "127.0.0.1"
    assert cfg.broker.url.startswith("mqtt")


BASE = 'device_id = "d1"\nfleet = "f"\ndata_dir = "data"\nroot_key = "root.pub"\n'


def test_every_example_key_is_known_and_typos_are_reported(tmp_path: Path) -> None:
    assert load_config(EXAMPLE).ignored_keys == ()
    path = tmp_path / "agent.toml"
    path.write_text(BASE + 'colour = "red"\n[fallbak]\nurl = "http://c"\n'
                    '[model]\nthreds = 4\n[telemetry]\ninterval_s = 5\n')
    assert load_config(path).ignored_keys == ("colour", "fallbak", "model.threds")
    # [drift] and [shadow] alike: a key this version does not know is reported, not fatal
    path.write_text(BASE + '[drift]\nwindw = 500\nwindow = 400\nmin_samples = 300\n'
                    '[shadow]\nsampel = 0.5\n')
    config = load_config(path)
    assert config.ignored_keys == ("drift.windw", "shadow.sampel")
    assert config.drift.window == 400 and config.shadow.sample == 0.1


@pytest.mark.parametrize("extra,key", [
    ('[broker]\nurl = "http://x"\n', "broker.url"),
    ('[model]\nthreads = 0\n', "model.threads"),
    ('[model]\nruntime = "tensorrt"\n', "model.runtime"),
    ('[api]\nlisten = "nonsense"\n', "api.listen"),
    ('[fallback]\nurl = "http://c"\npolicy = ["sometimes"]\n', "fallback.policy"),
    ('[fallback]\nurl = "http://c"\nconfidence = 2\n', "fallback.confidence"),
    ('[ota]\nchunk_size = "big"\n', "ota.chunk_size"),
    ('[broker]\ncert = "c.pem"\n', "broker.cert"),
])
def test_bad_value_names_the_key(tmp_path: Path, extra: str, key: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(BASE + extra)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path)


def test_missing_and_malformed(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('fleet = "f"\n')
    with pytest.raises(ConfigError, match="device_id: missing"):
        load_config(path)
    path.write_text('device_id = "a/b"\nfleet = "f"\ndata_dir = "d"\nroot_key = "r"\n')
    with pytest.raises(ConfigError, match="device_id"):
        load_config(path)
    path.write_text("device_id = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_relative_paths_are_from_the_config_dir(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(BASE)
    cfg = load_config(path)
    assert cfg.data_dir == tmp_path.resolve() / "data"
    assert cfg.root_key == tmp_path.resolve() / "root.pub"
    assert cfg.fallback is None


def test_agent_start_up_imports_stay_light() -> None:
    """The daemon's modules load no runtime and never the converter (a model load does)."""
    import subprocess
    import sys

    code = ("import sys, edgeship._cli.agent, edgeship.agent._daemon, edgeship.agent._ota, "
            "edgeship.agent._store\n"
            "print(','.join(m for m in ('onnx', 'onnxruntime', 'ai_edge_litert', "
            "'edgeship.converter') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
