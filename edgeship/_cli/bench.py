"""``edgeship bench``: run the ``hw-bench/bench_*.py`` scripts, then plot their results.

Each script runs as its own process (a crash or a leak in one cannot skew the next), with
its output streamed to the terminal so its table shows as it is measured. The runner
tells it where to write through ``EDGESHIP_BENCH_OUT`` and asks for a short run with
``EDGESHIP_BENCH_QUICK=1`` (see ``hw-bench/_common.py``). Plots come from
``hw-bench/_plots.py``, loaded from the benchmark folder on use (it is repo tooling, not
part of the installed package), and so does ``results/README.md`` (``_report.py``).
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import click

from edgeship._errors import ConfigError
from edgeship.sdk._fileio import write_atomic

PREFIX = "bench_"
OUT_ENV = "EDGESHIP_BENCH_OUT"
QUICK_ENV = "EDGESHIP_BENCH_QUICK"
_REPO_BENCH = Path(__file__).resolve().parents[2] / "hw-bench"


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How one benchmark run ended."""

    name: str
    status: str  # "ok" | "failed (exit N)" | "timeout" | "no result"
    seconds: float
    result: Path | None


def find_bench_dir(explicit: Path | None) -> Path:
    """``--dir``, else ``./hw-bench``, else the repository's ``hw-bench`` next to the code."""
    if explicit is not None:
        if not explicit.is_dir():
            raise ConfigError(f"--dir {explicit}: not a directory")
        return explicit.resolve()
    for candidate in (Path.cwd() / "hw-bench", _REPO_BENCH):
        if candidate.is_dir():
            return candidate.resolve()
    raise ConfigError("no hw-bench/ folder here; run from the edgeship checkout or pass --dir")


def discover(bench_dir: Path) -> dict[str, Path]:
    """``{name: script}`` for every ``bench_<name>.py``, sorted by name."""
    return {p.stem[len(PREFIX):]: p for p in sorted(bench_dir.glob(f"{PREFIX}*.py"))}


def describe(script: Path) -> str:
    """The first line of a script's docstring, read without running it."""
    try:
        doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8")[:200_000]))
    except (OSError, SyntaxError, ValueError):
        return ""
    return (doc or "").strip().splitlines()[0] if doc else ""


def select(available: dict[str, Path], names: tuple[str, ...]) -> dict[str, Path]:
    """The named subset (``bench_`` prefix and ``.py`` optional), in the order given."""
    if not names:
        return available
    chosen: dict[str, Path] = {}
    for raw in names:
        name = raw.removesuffix(".py").removeprefix(PREFIX)
        if name not in available:
            known = ", ".join(available) or "(none)"
            raise click.UsageError(f"no benchmark {raw!r}; available: {known}")
        chosen[name] = available[name]
    return chosen


def run_one(name: str, script: Path, out: Path, *, quick: bool, timeout: float) -> Outcome:
    """Run one script to completion; its result must appear as ``out/<name>.json``."""
    env = {**os.environ, OUT_ENV: str(out), QUICK_ENV: "1" if quick else "0"}
    own = script.parent / "results" / f"{name}.json"
    target = out / f"{name}.json"
    # a script that ignores EDGESHIP_BENCH_OUT writes its own results/; with --out
    # elsewhere, that committed file is put back as it was after the run
    elsewhere = own.resolve() != target.resolve()
    saved = own.read_bytes() if elsewhere and own.exists() else None
    began_wall, began = time.time(), time.monotonic()
    code = _run_group([sys.executable, str(script)], cwd=script.parent.parent, env=env,
                      timeout=timeout)
    status = {0: "ok", None: "timeout"}.get(code, f"failed (exit {code})")
    seconds = round(time.monotonic() - began, 1)
    result = _fresh_result(own, target, since=began_wall - 1.0)
    if elsewhere and saved is not None and own.read_bytes() != saved:
        write_atomic(own, saved)
    elif elsewhere and saved is None:
        own.unlink(missing_ok=True)
    if status == "ok" and result is None:
        status = "no result"
    return Outcome(name=name, status=status, seconds=seconds, result=result)


def _run_group(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> int | None:
    """Run ``argv`` in its own process group; exit code, or None after a timeout. On a
    timeout or Ctrl-C the whole group goes (a benchmark's servers and brokers too)."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return None
    except KeyboardInterrupt:
        _kill_group(proc)
        raise


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            # the leader is gone; its children may linger a moment on SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue


def _fresh_result(own: Path, target: Path, *, since: float) -> Path | None:
    """The JSON this run wrote, at ``target``; a fresh ``own`` file is copied there."""
    if target.exists() and target.stat().st_mtime >= since:
        return target
    if own.exists() and own.stat().st_mtime >= since and own.resolve() != target.resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(own, target)
        return target
    return None


def load_helper(bench_dir: Path, name: str) -> ModuleType:
    """Import ``<name>.py`` (``_plots``, ``_report``) from the benchmark folder, or the
    repository's copy when that folder has none."""
    path = bench_dir / f"{name}.py"
    if not path.exists():
        path = _REPO_BENCH / f"{name}.py"
    if not path.exists():
        raise ConfigError(f"no {name}.py in {bench_dir} or {_REPO_BENCH}")
    spec = importlib.util.spec_from_file_location(f"edgeship_hw_bench{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _plot(bench_dir: Path, out: Path, names: list[str] | None) -> None:
    """PNG per result, then results/README.md with every table and plot."""
    try:
        written, problems = load_helper(bench_dir, "_plots").plot_all(out, out, names)
    except RuntimeError as exc:  # matplotlib missing: say how to get it
        raise click.ClickException(str(exc)) from exc
    for png in written:
        click.echo(f"plot: {png}")
    for problem in problems:
        click.echo(f"plot skipped: {problem}", err=True)
    report, unreadable = load_helper(bench_dir, "_report").write_report(out)
    click.echo(f"report: {report}" + (f" ({len(unreadable)} unreadable)" if unreadable else ""))


def machine_line(result: Path | None) -> str | None:
    """The machine a result was measured on, from its JSON (every table names it)."""
    if result is None:
        return None
    try:
        machine = json.loads(result.read_text(encoding="utf-8")).get("machine") or {}
    except (OSError, ValueError, AttributeError):
        return None
    cpu = machine.get("cpu") or machine.get("platform") or "?"
    memory = f", {machine['memory_gib']} GiB" if machine.get("memory_gib") else ""
    return f"{cpu}, {machine.get('cpus', '?')} cpus{memory}, Python {machine.get('python', '?')}"


def _summary(outcomes: list[Outcome]) -> None:
    width = max(len(o.name) for o in outcomes)
    click.echo("\n" + f"{'bench'.ljust(width)}  {'status':<16} {'seconds':>8}  result")
    for o in outcomes:
        click.echo(f"{o.name.ljust(width)}  {o.status:<16} {o.seconds:>8.1f}  {o.result or '-'}")


@click.command()
@click.argument("names", nargs=-1)
@click.option("--list", "list_only", is_flag=True, help="list the benchmarks and exit")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where <name>.json and the PNG plots go [default: hw-bench/results]")
@click.option("--dir", "bench_dir", type=click.Path(path_type=Path), default=None,
              help="folder holding bench_*.py [default: ./hw-bench]")
@click.option("--quick", is_flag=True, help="ask each benchmark for a short run")
@click.option("--plot/--no-plot", default=True, show_default=True,
              help="make PNG plots of the results")
@click.option("--plot-only", is_flag=True, help="only re-plot the results already in --out")
@click.option("--timeout", type=click.FloatRange(1), default=3600, show_default=True,
              help="seconds one benchmark may run")
def bench(names: tuple[str, ...], list_only: bool, out: Path | None, bench_dir: Path | None,
          quick: bool, plot: bool, plot_only: bool, timeout: float) -> None:
    """Run the hw-bench benchmarks NAMES (default: all) and plot their results.

    Each hw-bench/bench_NAME.py prints its table and the machine it ran on and writes
    OUT/NAME.json; then every OUT/*.json is drawn as OUT/NAME.png.
    """
    folder = find_bench_dir(bench_dir)
    chosen = select(discover(folder), names)
    if list_only:
        for name, script in chosen.items():
            click.echo(f"{name}\t{describe(script)}")
        return
    out = (out or folder / "results").resolve()
    if plot_only:
        _plot(folder, out, list(chosen) if names else None)
        return
    if not chosen:
        raise ConfigError(f"no {PREFIX}*.py in {folder}")
    outcomes = []
    for name, script in chosen.items():
        click.echo(f"=== bench {name} ({script.name})", err=True)
        outcome = run_one(name, script, out, quick=quick, timeout=timeout)
        outcomes.append(outcome)
        machine = machine_line(outcome.result)
        if machine:
            click.echo(f"=== {name}: {outcome.status} in {outcome.seconds:.1f} s on {machine}",
                       err=True)
    _summary(outcomes)
    if plot:
        _plot(folder, out, None)
    failed = [o.name for o in outcomes if o.status != "ok"]
    if failed:
        raise click.ClickException(f"{len(failed)} benchmark(s) did not finish: "
                                   + ", ".join(failed))
