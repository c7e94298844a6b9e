"""``edgeship bench``: real subprocesses running fake bench scripts in a temp folder,
real JSON results and real PNG plots (matplotlib); plus the shared ``hw-bench/_common.py``."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TINY = f"""\"\"\"Tiny: a fake benchmark.

More text.\"\"\"
import sys
sys.path.insert(0, {str(ROOT / "hw-bench")!r})
from _common import print_machine, print_table, quick, timed, write_result

rows = [{{"model": "a", "p50_ms": 1.5, "size_bytes": 1000}},
        {{"model": "b", "p50_ms": 3.25, "size_bytes": 250}}]
print_machine()
print_table(rows, title="tiny latency")
write_result("tiny", {{"rows": rows, "loop": timed(lambda: sum(range(100)), 20),
                       "was_quick": quick()}})
"""

# ignores EDGESHIP_BENCH_OUT and writes where it likes (like a script written by hand)
LEGACY = """
import json, pathlib
out = pathlib.Path(__file__).parent / "results"
out.mkdir(exist_ok=True)
(out / "legacy.json").write_text(json.dumps({"bench": "legacy", "send_s": 0.5, "recv_s": 0.7}))
print("legacy done")
"""

BROKEN = """
import sys
print("measuring...")
sys.exit(3)
"""


# starts a grandchild (like a cloud server a benchmark runs), then hangs
HANG = """
import pathlib, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
pathlib.Path(sys.argv[0]).with_name("child.pid").write_text(str(child.pid))
time.sleep(300)
"""


def edgeship(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeship", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def bench_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "hw-bench"
    folder.mkdir()
    (folder / "bench_tiny.py").write_text(TINY)
    (folder / "bench_legacy.py").write_text(LEGACY)
    (folder / "bench_broken.py").write_text(BROKEN)
    (folder / "not_a_bench.py").write_text("raise SystemExit('must not run')\n")
    return folder


def test_list_finds_bench_scripts_only(bench_dir: Path) -> None:
    proc = edgeship("bench", "--list", cwd=bench_dir.parent)
    assert proc.returncode == 0, proc.stderr
    listed = [line.split("\t") for line in proc.stdout.splitlines()]
    assert listed == [["broken", ""], ["legacy", ""], ["tiny", "Tiny: a fake benchmark."]]


def test_runs_named_subset_writes_json_and_png(bench_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    committed = bench_dir / "results" / "legacy.json"
    committed.parent.mkdir()
    committed.write_text('{"bench": "legacy", "send_s": 9}')
    proc = edgeship("bench", "tiny", "bench_legacy.py", "--dir", str(bench_dir),
                    "--out", str(out), "--quick", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # the script's own table and machine line reach the user
    assert "## tiny latency" in proc.stdout and "machine:" in proc.stdout
    doc = json.loads((out / "tiny.json").read_text())
    assert doc["bench"] == "tiny" and doc["quick"] is True and doc["was_quick"] is True
    assert doc["machine"]["cpus"] >= 1 and doc["machine"]["python"]
    assert doc["loop"]["n"] == 20 and doc["loop"]["p50_ms"] <= doc["loop"]["p99_ms"]
    # the legacy script wrote next to itself; the runner copied it to --out and put the
    # committed result back as it was
    assert json.loads((out / "legacy.json").read_text())["recv_s"] == 0.7
    assert committed.read_text() == '{"bench": "legacy", "send_s": 9}'
    for name in ("tiny", "legacy"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 2000
    assert not (out / "broken.json").exists()
    assert "ok" in proc.stdout and f"plot: {out / 'tiny.png'}" in proc.stdout
    report = (out / "README.md").read_text()  # the page a forge shows for the folder
    assert "## tiny" in report and "![tiny](tiny.png)" in report
    assert "| model | p50_ms | size_bytes |" in report and "| b | 3.25 | 250 |" in report


def test_failing_bench_is_reported_and_others_still_run(bench_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "all"
    proc = edgeship("bench", "--out", str(out), "--no-plot", cwd=bench_dir.parent)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: 1 benchmark(s) did not finish: broken")
    assert "failed (exit 3)" in proc.stdout
    assert (out / "tiny.json").exists() and (out / "legacy.json").exists()
    assert not list(out.glob("*.png"))
    assert not (bench_dir / "results" / "legacy.json").exists()  # not left behind either
    assert "=== tiny: ok in " in proc.stderr and " cpus" in proc.stderr  # the machine, named


def test_unknown_name_is_a_usage_error(bench_dir: Path) -> None:
    proc = edgeship("bench", "nope", "--dir", str(bench_dir), cwd=bench_dir)
    assert proc.returncode == 2
    assert "no benchmark 'nope'; available: broken, legacy, tiny" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plot_only_tolerates_odd_results(bench_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "odd"
    out.mkdir()
    # a known bench whose format changed: its own chart fails, the generic one is drawn
    (out / "fallback.json").write_text(json.dumps({"bench": "fallback", "results": [1, 2],
                                                   "total_ms": 3.0, "size_bytes": 10}))
    (out / "empty.json").write_text(json.dumps({"bench": "empty", "note": "nothing numeric"}))
    (out / "garbage.json").write_text("{not json")
    proc = edgeship("bench", "--plot-only", "--out", str(out), "--dir", str(bench_dir),
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (out / "fallback.png").read_bytes()[:8] == PNG_MAGIC
    assert "generic chart instead" in proc.stderr
    assert "plot skipped: empty.json" in proc.stderr and "plot skipped: garbage.json" in proc.stderr
    assert not (out / "empty.png").exists()


def _common() -> object:
    spec = importlib.util.spec_from_file_location("hw_common", ROOT / "hw-bench" / "_common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_common_write_result_and_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    common = _common()
    monkeypatch.setenv("EDGESHIP_BENCH_OUT", str(tmp_path / "r"))
    path = common.write_result("x", {"value_ms": 2.0, "machine": {"cpu": "given"}})
    doc = json.loads(path.read_text())
    assert path == tmp_path / "r" / "x.json"
    assert doc["bench"] == "x" and doc["value_ms"] == 2.0
    assert doc["machine"] == {"cpu": "given"}  # the script's own machine block wins
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temp file left
    table = common.format_table([{"a": 1, "b": 0.123456}, {"a": 22}], title="t")
    assert table.splitlines() == ["## t", "a   b", "--  ------", "1   0.1235", "22"]


def test_timeout_ends_the_benchmark_and_its_children(tmp_path: Path) -> None:
    folder = tmp_path / "hw-bench"
    folder.mkdir()
    (folder / "bench_hang.py").write_text(HANG)
    proc = edgeship("bench", "--dir", str(folder), "--timeout", "6", "--no-plot", cwd=tmp_path)
    assert proc.returncode == 1
    assert "hang  timeout" in proc.stdout
    child = int((folder / "child.pid").read_text())
    deadline = time.monotonic() + 30
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(child), "the benchmark's child process outlived the timeout"


def _gone(pid: int) -> bool:
    """No such process, or a zombie (it no longer runs; init reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True
