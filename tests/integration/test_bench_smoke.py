"""Smoke test of the benchmark: bench/run --quick (1 s per scenario, 100 held connections) must
finish and report every server with its ratio to the textbook baseline. The figures themselves
are not checked: this only keeps bench/ from rotting. The full benchmark is not part of CI."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import BUILD, ROOT

SERVERS = ["baseline", "echod", "socat", "xinetd", "ncat"]


def test_bench_quick(tmp_path):
    missing = [t for t in ("socat", "xinetd", "ncat", "gnuplot", "cc") if not shutil.which(t)]
    if missing:
        pytest.skip(f"benchmark peers not installed: {' '.join(missing)}")
    raw = tmp_path / "raw.json"
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "run"), "--quick", "--no-deps", "--echod-build", BUILD,
         "--out", str(tmp_path), "--json", str(raw)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    md = (tmp_path / "RESULTS.md").read_text()
    assert (tmp_path / "rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = next(line for line in md.splitlines() if line.startswith("| measure |"))
    for s in SERVERS:
        assert f" {s} |" in header
        if s != "baseline":
            assert f" {s}/baseline |" in header
    # every row has a figure and a ratio cell per server ("—" where a server served nothing:
    # ncat loses half-closed echoes); echod's ratios are always there
    rows = [line for line in md.split("## Results")[1].split("![")[0].splitlines() if line.startswith("| ") and "---" not in line]
    for row in rows[1:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 2 + 2 * len(SERVERS) - 1, row
        assert cells[2 + len(SERVERS)].endswith("×"), row  # echod/baseline
    # echod itself must have echoed correctly in every scenario
    assert not [line for line in md.splitlines() if line.startswith("- echod:")]
    assert "| echod | 100 / 100 " in md
