"""Smoke test of the benchmark: bench/run --quick (1 s per scenario, 100 held connections) must
finish and report every server with its ratio to the textbook baseline, and its UDP echo section
(1 s per load, one repeat). The figures themselves are not checked: this only keeps bench/ from
rotting. The full benchmark is not part of CI."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import BUILD, ROOT

# every one of these is in the run; openbsd-inetd too when its .deb is in build-bench/peers (--no-deps
# downloads nothing)
SERVERS = ["baseline", "lean-fork", "epoll", "echod", "tcpserver", "tcpsvd", "socat", "xinetd", "ncat"]
UDP_SERVERS = ["xinetd", "socat", "echod", "echod-defaults"]  # and openbsd-inetd when bench/run has it


@pytest.mark.heavy  # 2 minutes of load; the sanitizer pass has its own (soak, floods), and figures of an ASan build mean nothing
def test_bench_quick(tmp_path):
    missing = [t for t in ("socat", "xinetd", "ncat", "tcpserver", "tcpsvd", "gnuplot", "cc") if not shutil.which(t)]
    if missing:
        pytest.skip(f"benchmark peers not installed: {' '.join(missing)}")
    raw = tmp_path / "raw.json"
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "run"), "--quick", "--no-deps", "--echod-build", BUILD,
         "--out", str(tmp_path), "--json", str(raw)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=420)
    assert out.returncode == 0, out.stderr[-2000:]
    md = (tmp_path / "RESULTS.md").read_text()
    assert (tmp_path / "rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the table of every server and each ÷ the textbook
    table = md.split("Every server, and each ÷ the textbook:", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    names = [c for c in header[2:] if "/" not in c]
    for s in SERVERS:
        assert s in names, header
        if s != "baseline":
            assert f"{s}/baseline" in header, header
    # every row has a figure and a ratio cell per server ("—" where a server served nothing:
    # ncat loses half-closed echoes); echod's ratios are always there
    assert len(rows) >= 10, rows
    for row in rows[1:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == len(header) == 2 + 2 * len(names) - 1, row
        assert cells[header.index("echod/baseline")].endswith("×"), row
    # echod itself must have echoed correctly in every scenario
    assert not [line for line in md.splitlines() if line.startswith("- echod:")]
    assert "| echod | 100 / 100 " in md

    # UDP echo: measured when bench/run can (root for its network namespace, an echoc with --udp);
    # otherwise the section says why not
    udp = md.split("## UDP echo", 1)[1]
    if "Not measured in this run:" in udp:
        assert os.geteuid() != 0 or "has no --udp" in udp, udp[:500]
        return
    table = [line for line in udp.splitlines() if line.startswith("| ") and "---" not in line]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    for s in UDP_SERVERS:
        assert s in header, header
    answered = next(row for row in table if row.startswith("| datagrams/s answered, window 64 "))
    cells = [c.strip() for c in answered.strip("|").split("|")]
    assert float(cells[header.index("echod")].replace(",", "")) > 0, answered
    if "openbsd-inetd" in header:
        assert cells[header.index("echod/openbsd-inetd")].endswith("×"), answered
    # every echo echod sent back was intact
    assert not [line for line in udp.splitlines() if line.startswith("- echod")], udp
