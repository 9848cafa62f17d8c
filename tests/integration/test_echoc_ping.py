"""echoc ping mode: random probes verified and timed, ping-style lines and summary, Ctrl-C,
--connect, JSON and Nagios output, against echod and the broken servers."""
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import time

import pytest

from conftest import ECHOC, sanitizer_env
from echo_servers import EchoServer, run_echoc

pytestmark = pytest.mark.timeout(60)

LINE = re.compile(r"^(\d+) bytes from (\S+): seq=(\d+)(?: connect=([\d.]+) ms)? time=([\d.]+) ms(.*)$")
SUMMARY = re.compile(r"^(\d+) sent, (\d+) echoed, ([\d.]+)% loss, (\d+) corrupted, time (\d+) ms$")
RTT = re.compile(r"^rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms$")


def parse(out):
    text = out.decode() if isinstance(out, bytes) else out
    lines = text.splitlines()
    probes = [LINE.match(l) for l in lines if LINE.match(l)]
    summ = [SUMMARY.match(l) for l in lines if SUMMARY.match(l)]
    rtt = [RTT.match(l) for l in lines if RTT.match(l)]
    return lines, probes, summ[0] if summ else None, rtt[0] if rtt else None


def refused_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def check_ping_ok(host, port, count=5):
    r = run_echoc("-c", count, "-i", "0.02", host, port)
    assert r.returncode == 0, r.stderr
    lines, probes, summ, rtt = parse(r.stdout)
    assert lines[0].startswith(f"ECHO {host} ({host}:{port}): 64 bytes per probe")
    assert [int(p.group(3)) for p in probes] == list(range(count))
    assert all(p.group(1) == "64" and p.group(2) == f"{host}:{port}" and p.group(6) == "" for p in probes)
    assert f"--- {host}:{port} echo statistics ---" in lines
    assert summ.groups()[:4] == (str(count), str(count), "0", "0")
    mn, avg, mx, mdev = map(float, rtt.groups())
    assert mn <= avg <= mx and mdev >= 0
    return r


def test_ping_correct_server():
    with EchoServer("echo") as srv:
        check_ping_ok(*srv.endpoint())


def test_ping_against_echod(echod):
    check_ping_ok(*echod.endpoint())


def test_ping_summary_arithmetic_with_known_delay():
    delay = 0.05
    with EchoServer("delay", delay=delay) as srv:
        r = run_echoc("-c", 6, "-i", "0", *srv.endpoint())
    assert r.returncode == 0, r.stderr
    _, probes, summ, rtt = parse(r.stdout)
    times = [float(p.group(5)) for p in probes]
    assert len(times) == 6
    mn, avg, mx, mdev = map(float, rtt.groups())
    # the summary is the arithmetic of the lines (each rounded to 0.001 ms)
    assert mn == pytest.approx(min(times), abs=0.0011)
    assert mx == pytest.approx(max(times), abs=0.0011)
    assert avg == pytest.approx(statistics.fmean(times), abs=0.002)
    assert mdev == pytest.approx(statistics.pstdev(times), abs=0.002)
    # and the delay is really seen
    assert mn >= delay * 1000
    assert avg < delay * 1000 + 40
    assert summ.groups()[:4] == ("6", "6", "0", "0")


def test_ping_flipped_byte_is_corruption():
    with EchoServer("flip", offset=64 + 6) as srv:
        r = run_echoc("-c", 3, "-i", "0", *srv.endpoint())
    assert r.returncode == 1
    _, probes, summ, _ = parse(r.stdout)
    assert probes[1].group(6) == " CORRUPTED (first difference at byte 6)"
    assert probes[0].group(6) == probes[2].group(6) == ""
    assert summ.groups()[:4] == ("3", "2", "0", "1")


def test_ping_silent_server_is_total_loss():
    with EchoServer("silent") as srv:
        t0 = time.monotonic()
        r = run_echoc("-c", 2, "-i", "0", "-W", "0.2", *srv.endpoint())
        assert time.monotonic() - t0 < 10
    assert r.returncode == 1
    out = r.stdout.decode()
    assert out.count(f"no echo from 127.0.0.1:{srv.port}: seq=") == 2
    _, _, summ, rtt = parse(out)
    assert summ.groups()[:4] == ("2", "0", "100", "0") and rtt is None


def test_ping_truncating_server():
    with EchoServer("truncate", after=100) as srv:
        r = run_echoc("-c", 4, "-i", "0", *srv.endpoint())
    assert r.returncode == 1
    assert "server closed the connection before echoing everything after 2 probes" in r.stderr
    _, probes, summ, _ = parse(r.stdout)
    assert len(probes) == 1 and summ.groups()[:2] == ("2", "1")


def test_ping_reset_server():
    with EchoServer("reset", after=128) as srv:
        r = run_echoc("-c", 10, "-i", "0.1", *srv.endpoint())
    assert r.returncode == 1
    # the reset comes 50 ms after the second echo: between probes, or during the third
    assert re.search(r"echoc: Connection reset by peer after [23] probes", r.stderr), r.stderr
    _, probes, summ, _ = parse(r.stdout)
    assert len(probes) == 2 and summ.group(2) == "2"


def test_ping_connect_mode_against_echod(echod):
    host, port = echod.endpoint()
    r = run_echoc("--connect", "-c", 3, "-i", "0", host, port)
    assert r.returncode == 0, r.stderr
    lines, probes, summ, rtt = parse(r.stdout)
    assert len(probes) == 3 and all(p.group(4) is not None for p in probes)
    assert any(l.startswith("connect min/avg/max/mdev = ") for l in lines)
    assert summ.groups()[:2] == ("3", "3")


def test_ping_connect_mode_refused_is_exit_2():
    s, port = refused_port()
    try:
        r = run_echoc("--connect", "-c", 2, "-i", "0", "127.0.0.1", port)
    finally:
        s.close()
    assert r.returncode == 2
    assert r.stdout.decode().count("Connection refused") == 2
    assert f"connect to 127.0.0.1:{port}: Connection refused" in r.stderr


def test_ping_refused_exit_2():
    s, port = refused_port()
    try:
        r = run_echoc("-c", 2, "127.0.0.1", port)
    finally:
        s.close()
    assert r.returncode == 2 and "Connection refused" in r.stderr


def test_ping_sigint_prints_summary():
    with EchoServer("echo") as srv:
        env = sanitizer_env(dict(os.environ))
        p = subprocess.Popen([ECHOC, "-i", "0.05", *map(str, srv.endpoint())], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env, text=True)
        try:
            seen = [p.stdout.readline() for _ in range(4)]  # header + 3 probes
            assert all(LINE.match(l.strip()) for l in seen[1:])
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=10)
        finally:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    _, probes, summ, rtt = parse("".join(seen) + out)
    assert summ and summ.group(1) == summ.group(2) and int(summ.group(1)) == len(probes) >= 3
    assert rtt


def test_ping_deadline_bounds_the_run():
    with EchoServer("echo") as srv:
        t0 = time.monotonic()
        r = run_echoc("-w", "0.5", "-i", "0.1", *srv.endpoint())
        elapsed = time.monotonic() - t0
    assert r.returncode == 0
    _, _, summ, _ = parse(r.stdout)
    assert 4 <= int(summ.group(1)) <= 6 and elapsed < 5


def test_ping_quiet_prints_only_summary():
    with EchoServer("echo") as srv:
        r = run_echoc("-q", "-c", 3, "-i", "0", *srv.endpoint())
    _, probes, summ, rtt = parse(r.stdout)
    assert r.returncode == 0 and probes == [] and summ and rtt


def test_ping_json():
    with EchoServer("delay", delay=0.02) as srv:
        r = run_echoc("--json", "-c", 3, "-i", "0", *srv.endpoint())
    assert r.returncode == 0
    d = json.loads(r.stdout)
    assert d["error"] is None and d["start"]["test_start"]["mode"] == "ping"
    assert [i["seq"] for i in d["intervals"]] == [0, 1, 2]
    assert all(i["status"] == "ok" and i["rtt_ms"] >= 20 for i in d["intervals"])
    e = d["end"]
    assert (e["sent"], e["echoed"], e["lost"], e["corrupted"], e["loss_percent"]) == (3, 3, 0, 0, 0)
    rtts = [i["rtt_ms"] for i in d["intervals"]]
    assert e["rtt_ms"]["min"] == pytest.approx(min(rtts), abs=1e-5)
    assert e["rtt_ms"]["avg"] == pytest.approx(statistics.fmean(rtts), abs=1e-5)
    assert e["rtt_ms"]["mdev"] == pytest.approx(statistics.pstdev(rtts), abs=1e-5)


def test_ping_json_no_echo_has_nulls_not_nan():
    with EchoServer("silent") as srv:
        r = run_echoc("--json", "-c", 1, "-W", "0.2", *srv.endpoint())
    assert r.returncode == 1
    assert b"NaN" not in r.stdout and b"nan" not in r.stdout
    d = json.loads(r.stdout)
    assert d["end"]["rtt_ms"] == {"min": None, "avg": None, "max": None, "mdev": None}
    assert d["end"]["loss_percent"] == 100 and d["intervals"][0]["status"] == "timeout"


NAGIOS = re.compile(r"^ECHO (OK|WARNING|CRITICAL|UNKNOWN) - (.*)\|rtt=(U|[\d.]+ms);([\d.]*);([\d.]*);0 "
                    r"loss=(U|[\d.]+%);([\d.]*);([\d.]*);0;100$")


def nagios(*args):
    r = run_echoc("--nagios", *args)
    out = r.stdout.decode().strip()
    m = NAGIOS.match(out)
    assert m, out
    return r.returncode, m


def test_nagios_rtt_thresholds():
    with EchoServer("delay", delay=0.03) as srv:
        ep = srv.endpoint()
        rc, m = nagios("-c", 2, "--warning-rtt", 500, "--critical-rtt", 1000, *ep)
        assert (rc, m.group(1)) == (0, "OK") and m.group(4, 5) == ("500", "1000")
        assert 30 <= float(m.group(3)[:-2]) < 500
        rc, m = nagios("-c", 2, "--warning-rtt", 10, "--critical-rtt", 1000, *ep)
        assert (rc, m.group(1)) == (1, "WARNING")
        rc, m = nagios("-c", 2, "--warning-rtt", 5, "--critical-rtt", 10, *ep)
        assert (rc, m.group(1)) == (2, "CRITICAL") and m.group(6) == "0.0%"


def test_nagios_loss_thresholds():
    # every second probe's echo comes 0.4 s late with -W 0.3: exactly 50 % loss
    with EchoServer("delay", delays=[0, 0.4]) as srv:
        ep = srv.endpoint()
        rc, m = nagios("-c", 4, "-i", "0", "-W", "0.3", "--warning-loss", 10, "--critical-loss", 60, *ep)
        assert (rc, m.group(1), m.group(6)) == (1, "WARNING", "50.0%"), m.group(0)
        assert m.group(7, 8) == ("10", "60")
        rc, m = nagios("-c", 4, "-i", "0", "-W", "0.3", "--warning-loss", 10, "--critical-loss", 40, *ep)
        assert (rc, m.group(1)) == (2, "CRITICAL")


def test_nagios_failures():
    with EchoServer("silent") as srv:
        rc, m = nagios("-c", 1, "-W", "0.2", *srv.endpoint())
        assert (rc, m.group(1), m.group(3), m.group(6)) == (2, "CRITICAL", "U", "100.0%")
    with EchoServer("flip", offset=3) as srv:
        rc, m = nagios("-c", 2, "-i", "0", *srv.endpoint())
        assert (rc, m.group(1)) == (2, "CRITICAL") and "1 corrupted" in m.group(2)
    s, port = refused_port()
    try:
        r = run_echoc("--nagios", "127.0.0.1", port)
    finally:
        s.close()
    assert r.returncode == 2 and r.stdout.decode().startswith("ECHO CRITICAL - connect to 127.0.0.1:")
    r = run_echoc("--nagios", "--warning-rtt", "abc", "127.0.0.1")
    assert r.returncode == 3  # UNKNOWN on usage errors
    assert r.stdout.decode().startswith("ECHO UNKNOWN - ")


def test_nagios_against_echod(echod):
    rc, m = nagios("--warning-rtt", 200, "--critical-rtt", 500, *echod.endpoint())
    assert (rc, m.group(1)) == (0, "OK") and "5/5 echoed" in m.group(2)
