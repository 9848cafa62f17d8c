"""'echod status': the control socket, its text and JSON reports, SIGUSR1; counters checked
exactly against known traffic; and an answer in well under a second with 10,000 connections."""
import json
import os
import re
import resource
import signal
import socket
import stat
import subprocess
import time

import pytest

from conftest import ECHOD, connect, connect_from, ping, refused


def status(e, *args):
    out = subprocess.run([ECHOD, "-f", e.conf_path, "status", *args], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def status_json(e):
    return json.loads(status(e, "--json"))


def control_path(e):
    return os.path.join(e.dir, "control")


def test_counters_are_exact(echod_factory):
    e = echod_factory(start=False)
    ctl = os.path.join(e.dir, "control")
    e = echod_factory(
        listen='"0.0.0.0:0", "127.0.0.1:0 proxy"', control_socket=f'"{ctl}"',
        max_connections=3, max_per_source=2, deny='{"127.0.0.9"}',
        # rates that refill only 0.1 token in 10 s: exactly the bursts are available
        connection_rate=0.01, connection_burst=8, per_source_rate=0.01, per_source_burst=3)
    plain = ("127.0.0.1", int(e.addresses[0].rsplit(":", 1)[1]))
    proxy = ("127.0.0.1", int(e.addresses[1].rsplit(":", 1)[1]))

    a1, a2 = connect_from(plain, "127.0.0.2"), connect_from(plain, "127.0.0.2")
    assert ping(a1, b"a" * 100) and ping(a2, b"b" * 200)
    s = connect_from(plain, "127.0.0.2")
    assert refused(s)                     # per-source (A holds 2)
    b1 = connect_from(plain, "127.0.0.3")
    assert ping(b1, b"c" * 300)           # 3 active now
    for src, n in (("127.0.0.3", 1), ("127.0.0.4", 4)):
        for _ in range(n):                # capacity x4, then the 4th from .4 hits its source rate
            s = connect_from(plain, src)
            assert refused(s)
            s.close()
    s = connect_from(plain, "127.0.0.9")
    assert refused(s)                     # acl
    s = connect(proxy)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert refused(s)                     # proxy: malformed header
    s = connect_from(plain, "127.0.0.6")
    assert refused(s)                     # rate: the 8 global tokens are spent
    victim = max(e.children())            # b1's: the last fork
    os.kill(victim, signal.SIGKILL)       # a crashed child
    e.wait_log(rf"127\.0\.0\.3:\d+ closed: killed-by-SIGKILL, 300 bytes in, 300 bytes out, [\d.]+ s, pid {victim}")

    st = status_json(e)
    assert st["totals"] == {"accepted": 3, "active": 2, "pending": 0, "peak": 3, "max": 3, "queued": 0, "refused": 9,
                            "closed": 1, "crashed": 1, "bytes_in": 600, "bytes_out": 600}
    assert st["refused"] == {"capacity": 4, "per-source": 1, "rate": 1, "per-source-rate": 1, "acl": 1,
                             "proxy": 1, "fork-failed": 0, "spawner-failed": 0}
    assert sorted(c["pid"] for c in st["connections"]) == sorted(e.children())
    peers = sorted(c["peer"].rsplit(":", 1)[0] for c in st["connections"])
    assert peers == ["127.0.0.2", "127.0.0.2"]
    assert st["top_sources_active"] == [{"source": "127.0.0.2/32", "active": 2}]
    refusals = {x["source"]: x["refused"] for x in st["top_sources_refused"]}
    assert refusals == {"127.0.0.4/32": 4, "127.0.0.2/32": 1, "127.0.0.3/32": 1, "127.0.0.9/32": 1,
                        "127.0.0.1/32": 1, "127.0.0.6/32": 1}
    assert st["top_sources_refused"][0]["source"] == "127.0.0.4/32"
    assert [(x["socket"], x["proxy"]) for x in st["listeners"]] == [("bound", False), ("bound", True)]
    assert st["config"]["path"] == e.conf_path and st["config"]["reloads"] == 0
    # STATUS= for systemctl says the same in one line
    one_line = e.current_status() if "accepted 3" in (e.current_status() or "") else \
        e.wait_status(lambda x: "3 accepted" in x and " 1 crashed" in x)
    assert "2 active (peak 3)" in one_line and "9 refused (capacity 4, per-source 1, rate 1, " \
        "per-source-rate 1, acl 1, proxy 1, fork 0, spawner 0), 1 crashed" in one_line
    # the human report: aligned columns with the same numbers
    text = status(e)
    assert "totals       accepted 3  refused 9  crashed 1  bytes in 600  bytes out 600" in text
    rows = [ln for ln in text.splitlines() if ln.split()[:1] and ln.split()[0].isdigit()]
    assert len(rows) == 2 and len({ln.index("127.0.0.") for ln in rows}) == 1  # one column
    for s in (a1, a2, b1):
        s.close()


def test_live_connection_details(echod_factory, tmpdir_path):
    ctl = os.path.join(tmpdir_path, "ctl", "control")
    e = echod_factory(control_socket=f'"{ctl}"', max_per_source=0)
    s = connect(e.endpoint())
    assert ping(s, b"x" * 1234)
    deadline = time.monotonic() + 5
    while True:  # idle grows while nothing moves
        (c,) = status_json(e)["connections"]
        if c["idle_usec"] >= 300000 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert c["bytes_in"] == 1234 and c["bytes_out"] == 1234
    assert c["idle_usec"] >= 300000 and c["age_usec"] >= c["idle_usec"]
    assert c["peer"] == "%s:%d" % s.getsockname()
    mode = os.stat(ctl).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600  # owner only
    s.close()


def test_sigusr1_logs_the_report(echod_factory, tmpdir_path):
    e = echod_factory(control_socket='""', max_per_source=0)
    s = connect(e.endpoint())
    assert ping(s)
    e.proc.send_signal(signal.SIGUSR1)
    e.wait_log(r"status: totals       accepted 1  refused 0  crashed 0")
    e.wait_log(r"status: \d+ +127\.0\.0\.1:\d+ +- ")
    s.close()


def test_status_without_daemon_fails_clearly(echod_factory, tmpdir_path):
    e = echod_factory(start=False, control_socket=f'"{tmpdir_path}/nothing/control"')
    out = subprocess.run([ECHOD, "-f", e.conf_path, "status"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 1
    assert "cannot ask" in out.stderr and "is echod running?" in out.stderr


def test_stuck_control_client_blocks_nothing(echod_factory, tmpdir_path):
    ctl = os.path.join(tmpdir_path, "control")
    e = echod_factory(control_socket=f'"{ctl}"')
    stuck = socket.socket(socket.AF_UNIX)
    stuck.connect(ctl)           # says nothing
    with connect(e.endpoint()) as s:
        assert ping(s)           # the loop goes on
    assert status_json(e)["totals"]["accepted"] == 1  # and other clients are answered
    stuck.settimeout(10)
    t0 = time.monotonic()
    assert stuck.recv(10) == b""  # dropped after its timeout
    assert time.monotonic() - t0 < 7
    stuck.close()


def test_second_daemon_on_same_control_socket(echod_factory, tmpdir_path):
    ctl = os.path.join(tmpdir_path, "control")
    e1 = echod_factory(control_socket=f'"{ctl}"')
    e2 = echod_factory(control_socket=f'"{ctl}"')  # still starts, without a control socket
    e2.wait_log(r"another echod answers on .*control: running without a control socket")
    assert status_json(e1)["pid"] == e1.proc.pid


@pytest.mark.heavy
def test_10000_connections(echod_factory, tmpdir_path):
    n = 10000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < n + 200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below {n + 200}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (n + 200, hard))
    ctl = os.path.join(tmpdir_path, "control")
    e = echod_factory(control_socket=f'"{ctl}"', max_connections=n, max_per_source=0, backlog=4096,
                      log_connections="false")
    socks = []

    def wait_children(pred, what, timeout=120):
        deadline = time.monotonic() + timeout
        while not pred(len(e.children())):
            assert time.monotonic() < deadline, f"{what}: {len(e.children())} children"
            time.sleep(0.1)

    try:
        # open in batches as fast as echod forks: a client faster than the accept queue would
        # only lose handshakes to the kernel (an accept-queue overflow drops them silently)
        while len(socks) < n:
            for _ in range(min(500, n - len(socks))):
                socks.append(connect(e.endpoint(), timeout=30))
            wait_children(lambda k: k >= len(socks) - 500, "forks lag")
        wait_children(lambda k: k == n, "not all connections have a child")
        for s in socks[:: n // 20]:  # a sample echoes
            assert ping(s)
        t0 = time.monotonic()
        st = status_json(e)
        took = time.monotonic() - t0
        assert st["totals"]["active"] == n and len(st["connections"]) == n
        t0 = time.monotonic()
        text = status(e)
        took_text = time.monotonic() - t0
        assert "active %d" % n in text
        rows = re.findall(r"^\d+ +127\.0\.0\.1:\d+ ", text, re.M)
        assert len(rows) == n  # a row per connection
        print(f"status with {n} connections: json {took * 1000:.0f} ms, text {took_text * 1000:.0f} ms")
        assert took < 1.0 and took_text < 1.0
    finally:
        for s in socks:
            s.close()
        wait_children(lambda k: k == 0, "children left after their clients closed")
