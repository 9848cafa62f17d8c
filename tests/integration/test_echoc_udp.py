"""echoc --udp: UDP echo ping and load against real UDP echo servers this file starts itself
(socat, a Python echo socket) and deliberately hostile ones whose every misdeed is counted, so
that echoc's figures can be asserted exactly.

Every server binds its socket before the test runs echoc (datagrams that come early wait in the
socket buffer); socat's port is waited for in /proc/net/udp. Nothing sleeps and hopes."""
import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading

import pytest

from conftest import ECHOC, free_port, sanitizer_env, wait_until
from echo_servers import run_echoc

pytestmark = pytest.mark.timeout(60)

HEADER = 24  # session (8), seq (8), send time (8); echoc(1) documents the layout
LINE = re.compile(r"^(\d+) bytes from (\S+): seq=(\d+) time=([\d.]+) ms(.*)$")
SUMMARY = re.compile(r"^(\d+) sent, (\d+) received, ([\d.]+)% loss, (\d+) duplicates, (\d+) reordered, "
                     r"(\d+) corrupted, (\d+) stray, (\d+) refused, time (\d+) ms$")
RTT = re.compile(r"^rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms$")
PCT = re.compile(r"^rtt p50/p99 = ([\d.]+)/([\d.]+) ms$")
NAGIOS = re.compile(r"^ECHO (OK|WARNING|CRITICAL|UNKNOWN) - (.*)\|rtt=(\S+);(\S*);(\S*);0 loss=(\S+);(\S*);(\S*);0;100$")
END_KEYS = {"sent", "received", "lost", "loss_percent", "duplicates", "reordered", "corrupted", "stray",
            "refused", "late", "seconds", "rtt_ms"}
LOAD_END_KEYS = END_KEYS | {"sent_per_second", "received_per_second", "bits_per_second"}
RTT_KEYS = {"min", "avg", "max", "mdev", "p50", "p90", "p99"}


class UdpServer:
    """A UDP echo server on a thread. handle(data) returns the datagrams to send back, in order;
    the counters say what it did. Subclasses misbehave."""

    def __init__(self, family=socket.AF_INET):
        self.host = "127.0.0.1" if family == socket.AF_INET else "::1"
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((self.host, 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.received = self.echoed = 0
        self.closing = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def endpoint(self):
        return self.host, self.port

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closing = True
        self.thread.join(5)
        self.sock.close()

    def _run(self):
        while not self.closing:
            try:
                data, peer = self.sock.recvfrom(70000)
            except socket.timeout:
                continue
            self.received += 1
            for d in self.handle(data):
                self.sock.sendto(d, peer)

    def handle(self, data):
        self.echoed += 1
        return [data]


class Silent(UdpServer):
    def handle(self, data):
        return []


class Delay(UdpServer):
    delay = 0.03

    def handle(self, data):
        threading.Event().wait(self.delay)
        return super().handle(data)


def seq_of(data):
    return struct.unpack("!Q", data[8:16])[0]


class Hostile(UdpServer):
    """By probe sequence number: drops 2, 5, 8, 11; answers 1 and 7 twice; flips byte 30 of 4;
    holds 9 back and answers it after 10; after 0, also sends a datagram of nobody's session."""

    DROP, DUP, CORRUPT, HOLD = {2, 5, 8, 11}, {1, 7}, {4}, {9}

    def __init__(self):
        self.held = None
        super().__init__()

    def handle(self, data):
        seq = seq_of(data)
        if seq in self.DROP:
            return []
        if seq in self.HOLD:
            self.held = data
            return []
        if seq in self.CORRUPT:
            return [data[:30] + bytes([data[30] ^ 0x01]) + data[31:]]
        out = [data] * (2 if seq in self.DUP else 1)
        if seq == 0:
            out.append(os.urandom(len(data)))
        if self.held is not None:
            out.append(self.held)
            self.held = None
        return out


class Mixed(UdpServer):
    """By arrival order (the i-th datagram, from 0): i % 6 == 1 dropped, == 3 a byte flipped,
    == 5 answered twice. Counts each."""

    def __init__(self):
        self.dropped = self.corrupted = self.duplicated = 0
        super().__init__()

    def handle(self, data):
        i = self.received - 1
        if i % 6 == 1:
            self.dropped += 1
            return []
        if i % 6 == 3:
            self.corrupted += 1
            return [data[:-1] + bytes([data[-1] ^ 0x80])]
        self.echoed += 1
        if i % 6 == 5:
            self.duplicated += 1
            return [data, data]
        return [data]


class DropThird(UdpServer):
    """Drops every third datagram it receives (the 3rd, 6th, ...), echoes the rest."""

    def __init__(self):
        self.dropped = 0
        super().__init__()

    def handle(self, data):
        if self.received % 3 == 0:
            self.dropped += 1
            return []
        return super().handle(data)


def udp_port_bound(port):
    """Whether a socket is bound to 127.0.0.1:port or *:port, from /proc/net/udp."""
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            addr, p = line.split()[1].split(":")
            if int(p, 16) == port and addr in ("0100007F", "00000000"):
                return True
    return False


@pytest.fixture
def socat_echo():
    """socat as a UDP echo service: a child per datagram (UDP-RECVFROM,fork), which echoes that one
    datagram through PIPE. (UDP-LISTEN with PIPE would run datagrams together under load.)"""
    if not os.access("/usr/bin/socat", os.X_OK):
        pytest.skip("socat is not installed")
    port = free_port()
    proc = subprocess.Popen(["socat", f"UDP-RECVFROM:{port},bind=127.0.0.1,reuseaddr,fork", "PIPE"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: udp_port_bound(port) or proc.poll() is not None, 10, "socat to bind its port")
        assert proc.poll() is None, proc.stderr.read()
        yield "127.0.0.1", port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def parse_ping(out):
    lines = out.decode().splitlines()
    summ = [m for m in map(SUMMARY.match, lines) if m]
    rtt = [m for m in map(RTT.match, lines) if m]
    pct = [m for m in map(PCT.match, lines) if m]
    return lines, summ[0] if summ else None, rtt[0] if rtt else None, pct[0] if pct else None


def udp_json(*args):
    r = run_echoc("--udp", "--json", *args)
    return r, json.loads(r.stdout)


# ---- ping ----

def test_ping_against_socat(socat_echo):
    host, port = socat_echo
    r = run_echoc("--udp", "-c", 5, "-i", "0.05", host, port)
    assert r.returncode == 0, (r.stdout, r.stderr)
    lines, summ, rtt, pct = parse_ping(r.stdout)
    assert lines[0] == f"ECHO {host} ({host}:{port}): 64 bytes per probe over UDP"
    probes = [m for m in map(LINE.match, lines) if m]
    assert sorted(int(m.group(3)) for m in probes) == list(range(5))
    assert all(m.group(1) == "64" and m.group(2) == f"{host}:{port}" and m.group(5) == "" for m in probes)
    assert f"--- {host}:{port} udp echo statistics ---" in lines
    assert summ.groups()[:8] == ("5", "5", "0", "0", "0", "0", "0", "0")
    mn, avg, mx, mdev = map(float, rtt.groups())
    p50, p99 = map(float, pct.groups())
    assert 0 < mn <= avg <= mx and mdev >= 0
    assert mn <= p50 <= p99 <= mx * 1.02  # the histogram's buckets are within 1.6 %


def test_ping_json_against_python_echo():
    with UdpServer() as srv:
        r, j = udp_json("-c", 4, "-i", "0.02", "-s", 100, *srv.endpoint())
    assert r.returncode == 0, r.stderr
    assert srv.received == 4  # one datagram a probe, nothing more
    ts = j["start"]["test_start"]
    assert ts == {"protocol": "udp", "mode": "ping", "timeout": 1.0, "size": 100, "count": 4, "interval": 0.02,
                  "deadline": None}
    c = j["start"]["connected"][0]
    assert (c["remote_host"], c["remote_port"]) == srv.endpoint() and c["local_host"] == "127.0.0.1"
    end = j["end"]
    assert set(end) == END_KEYS and set(end["rtt_ms"]) == RTT_KEYS
    assert {k: end[k] for k in END_KEYS - {"seconds", "rtt_ms"}} == {
        "sent": 4, "received": 4, "lost": 0, "loss_percent": 0.0, "duplicates": 0, "reordered": 0,
        "corrupted": 0, "stray": 0, "refused": 0, "late": 0}
    rt = end["rtt_ms"]
    assert 0 < rt["min"] <= rt["avg"] <= rt["max"] and rt["p50"] <= rt["p99"]
    assert [(p["seq"], p["status"], p["bytes"], p["duplicates"], p["reordered"], p["late"])
            for p in j["intervals"]] == [(i, "ok", 100, 0, False, False) for i in range(4)]
    assert all(p["rtt_ms"] > 0 and p["error"] is None and "connect_ms" not in p for p in j["intervals"])
    assert j["error"] is None


def test_ping_ipv6():
    try:
        srv = UdpServer(socket.AF_INET6)
    except OSError as e:
        pytest.skip(f"no IPv6 loopback: {e}")
    with srv:
        r = run_echoc("--udp", "-6", "-c", 2, "-i", "0.02", "::1", srv.port)
    assert r.returncode == 0, r.stderr
    assert f"64 bytes from [::1]:{srv.port}: seq=1 time=" in r.stdout.decode()


def test_ping_hostile_server_text():
    """Every misdeed of Hostile is seen, exactly once, on the right probe."""
    with Hostile() as srv:
        r = run_echoc("--udp", "-c", 12, "-i", "0.05", "-W", "0.5", *srv.endpoint())
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines, summ, rtt, _ = parse_ping(r.stdout)
    ep = "%s:%d" % srv.endpoint()
    ok = [m for m in map(LINE.match, lines) if m and "CORRUPTED" not in m.group(5)]
    plain = sorted(int(m.group(3)) for m in ok if m.group(5) in ("", " (reordered)"))
    assert plain == [0, 1, 3, 6, 7, 9, 10]
    assert sorted(int(m.group(3)) for m in ok if m.group(5) == " (DUP!)") == [1, 7]
    assert [int(m.group(3)) for m in ok if "reordered" in m.group(5)] == [9]
    assert len(ok) == 9
    assert [l for l in lines if "CORRUPTED" in l] == [
        l for l in lines if re.fullmatch(rf"64 bytes from {ep}: seq=4 time=[\d.]+ ms CORRUPTED \(first difference at byte 30\)", l)]
    assert len([l for l in lines if "CORRUPTED" in l]) == 1
    assert lines.count(f"64 bytes from {ep}: stray datagram, not a reply to this run") == 1
    assert sorted(l for l in lines if l.startswith("no echo")) == [
        f"no echo from {ep}: seq={k} timeout=0.500 s" for k in (11, 2, 5, 8)]
    # sent, received, loss, duplicates, reordered, corrupted, stray, refused
    assert summ.groups()[:8] == ("12", "7", "33.3333", "2", "1", "1", "1", "0")
    assert rtt is not None


def test_ping_hostile_server_json():
    with Hostile() as srv:
        r, j = udp_json("-c", 12, "-i", "0.05", "-W", "0.5", *srv.endpoint())
    assert r.returncode == 1, r.stderr
    end = j["end"]
    assert {k: end[k] for k in ("sent", "received", "lost", "duplicates", "reordered", "corrupted", "stray",
                                "refused", "late")} == {
        "sent": 12, "received": 7, "lost": 4, "duplicates": 2, "reordered": 1, "corrupted": 1, "stray": 1,
        "refused": 0, "late": 0}
    assert end["loss_percent"] == pytest.approx(100 * 4 / 12, abs=1e-5)
    status = {p["seq"]: p["status"] for p in j["intervals"]}
    assert status == {0: "ok", 1: "ok", 2: "timeout", 3: "ok", 4: "corrupted", 5: "timeout", 6: "ok", 7: "ok",
                      8: "timeout", 9: "ok", 10: "ok", 11: "timeout"}
    by_seq = {p["seq"]: p for p in j["intervals"]}
    assert [s for s, p in by_seq.items() if p["duplicates"]] == [1, 7]
    assert [s for s, p in by_seq.items() if p["reordered"]] == [9]
    assert by_seq[4]["mismatch_offset"] == 30 and by_seq[4]["rtt_ms"] > 0
    assert all(by_seq[s]["rtt_ms"] is None for s in (2, 5, 8, 11))
    assert j["error"] is None


def test_ping_port_closed_is_refused_and_loss():
    """ICMP port unreachable comes back on the connected socket as ECONNREFUSED: each probe says
    so at once (no waiting for -W), counts as lost, exit 1."""
    port = free_port()
    r = run_echoc("--udp", "-c", 3, "-i", "0.05", "-W", "5", "127.0.0.1", port)
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines, summ, rtt, _ = parse_ping(r.stdout)
    assert [l for l in lines if l.startswith("error from")] == [
        f"error from 127.0.0.1:{port}: seq={k} Connection refused (ICMP port unreachable)" for k in range(3)]
    assert summ.groups()[:8] == ("3", "0", "100", "0", "0", "0", "0", "3")
    assert int(summ.group(9)) < 4000  # nobody waited the 5 s timeout
    assert rtt is None
    assert "Connection refused (ICMP port unreachable), 3 times for 3 datagrams" in r.stderr

    r, j = udp_json("-c", 2, "-i", "0.05", "127.0.0.1", port)
    assert r.returncode == 1
    assert (j["end"]["sent"], j["end"]["lost"], j["end"]["refused"], j["end"]["loss_percent"]) == (2, 2, 2, 100.0)
    assert [(p["status"], p["error"]) for p in j["intervals"]] == [("error", "Connection refused")] * 2
    assert "Connection refused" in j["error"]


def test_ping_silent_server_times_out():
    with Silent() as srv:
        r = run_echoc("--udp", "-c", 2, "-i", "0.05", "-W", "0.2", *srv.endpoint())
    assert r.returncode == 1
    lines, summ, rtt, _ = parse_ping(r.stdout)
    ep = "%s:%d" % srv.endpoint()
    assert [l for l in lines if l.startswith("no echo")] == [f"no echo from {ep}: seq={k} timeout=0.200 s" for k in (0, 1)]
    assert summ.groups()[:8] == ("2", "0", "100", "0", "0", "0", "0", "0") and rtt is None
    assert srv.received == 2


def test_ping_interrupt_waits_for_outstanding_then_reports():
    """SIGINT stops sending; the summary follows (exit 0 when every probe sent was echoed)."""
    with UdpServer() as srv:
        proc = subprocess.Popen([ECHOC, "--udp", "-i", "0.05", *map(str, srv.endpoint())],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=sanitizer_env(dict(os.environ)))
        got = b""
        while got.count(b"\n") < 4:  # the heading and three replies
            got += proc.stdout.read1(4096)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    lines, summ, _, _ = parse_ping(got + out)
    assert proc.returncode == 0, err
    assert int(summ.group(1)) >= 3 and summ.group(1) == summ.group(2)


def test_nagios_states():
    with UdpServer() as srv:
        r = run_echoc("--udp", "--nagios", "--warning-rtt", 500, "--critical-rtt", 1000, *srv.endpoint())
        m = NAGIOS.match(r.stdout.decode().strip())
        assert m and (r.returncode, m.group(1)) == (0, "OK"), r.stdout
        assert m.group(2).startswith("%s:%d/udp: 5/5 received, 0.0%% loss, 0 duplicates, 0 corrupted, rtt avg " % srv.endpoint())
        assert (m.group(4), m.group(5), m.group(6)) == ("500", "1000", "0.0%")
    with Delay() as srv:
        r = run_echoc("--udp", "--nagios", "-c", 2, "--warning-rtt", 10, "--critical-rtt", 1000, *srv.endpoint())
        m = NAGIOS.match(r.stdout.decode().strip())
        assert m and (r.returncode, m.group(1)) == (1, "WARNING"), r.stdout
        assert float(m.group(3)[:-2]) >= 30
    with DropThird() as srv:  # 1 of 3 lost: 33.3 %
        args = ("--udp", "--nagios", "-c", 3, "-i", "0.02", "-W", "0.3")
        r = run_echoc(*args, "--critical-loss", 50, *srv.endpoint())
        m = NAGIOS.match(r.stdout.decode().strip())
        assert m and (r.returncode, m.group(1), m.group(6)) == (1, "WARNING", "33.3%"), r.stdout
        r = run_echoc(*args, "--critical-loss", 20, *srv.endpoint())
        m = NAGIOS.match(r.stdout.decode().strip())
        assert m and (r.returncode, m.group(1), m.group(6)) == (2, "CRITICAL", "33.3%"), r.stdout
    with Hostile() as srv:  # any corruption is critical
        r = run_echoc("--udp", "--nagios", "-c", 6, "-i", "0.02", "-W", "0.3", "--warning-loss", 90, *srv.endpoint())
        m = NAGIOS.match(r.stdout.decode().strip())
        assert m and (r.returncode, m.group(1)) == (2, "CRITICAL") and "1 corrupted" in m.group(2), r.stdout
    port = free_port()
    r = run_echoc("--udp", "--nagios", "-c", 2, "127.0.0.1", port)
    m = NAGIOS.match(r.stdout.decode().strip())
    assert m and (r.returncode, m.group(1), m.group(3), m.group(6)) == (2, "CRITICAL", "U", "100.0%"), r.stdout
    assert "Connection refused (ICMP port unreachable)" in m.group(2)


@pytest.mark.parametrize("args,msg", [
    (["--connect"], "--connect is for TCP only"),
    (["--proxy", "v1"], "--proxy is for TCP only"),
    (["--proxy", "v2", "--proxy-source", "192.0.2.1:5"], "--proxy-source is for TCP only"),
    (["--load", "--connections", "3"], "--connections is for TCP only"),
    (["--load", "--persistent"], "--persistent is for TCP only"),
    (["-v"], "--verbose is for TCP only"),
    (["-s", "23"], "-s must be 24 to 65507"),
    (["-s", "65508"], "-s must be 24 to 65507"),
    (["-W", "0"], "-W must be more than 0"),
    (["--load", "-c", "3"], "--load does not combine"),
])
def test_usage_errors(args, msg):
    r = run_echoc("--udp", *args, "127.0.0.1", 7)
    assert r.returncode == 2 and msg in r.stderr and r.stdout == b"", r.stderr
    r = run_echoc("-u", "--nagios", *args, "127.0.0.1", 7)
    assert r.returncode == 3 and r.stdout.decode().startswith("ECHO UNKNOWN - ")


def test_window_needs_udp():
    r = run_echoc("--load", "--window", 8, "127.0.0.1", 7)
    assert r.returncode == 2 and "--window is for UDP load" in r.stderr


# ---- load ----

def check_load_json(j, window=64, duration=2.0):
    assert j["start"]["test_start"] == {"protocol": "udp", "mode": "load", "timeout": j["start"]["test_start"]["timeout"],
                                        "size": 64, "duration": duration, "rate": None, "window": window}
    end = j["end"]
    assert set(end) == LOAD_END_KEYS and set(end["rtt_ms"]) == RTT_KEYS
    assert end["corrupted"] == 0 and end["sent"] == end["received"] + end["lost"]
    assert end["received"] > 0 and end["sent_per_second"] > 0 and end["received_per_second"] > 0
    assert end["bits_per_second"] == pytest.approx(end["received_per_second"] * 64 * 8, rel=1e-6)
    rt = end["rtt_ms"]
    assert 0 < rt["min"] <= rt["p50"] <= rt["p99"] <= rt["max"] * 1.02
    assert j["intervals"] and all({"start", "end", "seconds", "sent", "received", "sent_per_second",
                                   "received_per_second"} == set(i) for i in j["intervals"])
    assert sum(i["sent"] for i in j["intervals"]) == end["sent"]


def test_load_against_python_echo():
    with UdpServer() as srv:
        r, j = udp_json("--load", "--duration", 2, *srv.endpoint())
    assert r.returncode == 0, (r.stderr, j["end"])
    check_load_json(j)
    end = j["end"]
    assert end["sent"] == srv.received == srv.echoed == end["received"]
    assert (end["lost"], end["corrupted"], end["duplicates"], end["stray"], end["refused"]) == (0, 0, 0, 0, 0)
    assert 1.9 < end["seconds"] < 2.5


def test_load_against_socat(socat_echo):
    """--window 1: socat's fork-per-datagram mode now and then loses datagrams when several wait at
    once (a window of 16 lost about 1 run in 6 here, whole windows at a time; echoc counted them),
    so one at a time, where it loses none."""
    r, j = udp_json("--load", "--duration", 2, "--window", 1, *socat_echo)
    assert r.returncode == 0, (r.stderr, j["end"])
    check_load_json(j, window=1)
    assert j["end"]["lost"] == 0 and j["end"]["reordered"] == 0


def test_load_text_report():
    with UdpServer() as srv:
        r = run_echoc("--udp", "--load", "--duration", 1, *srv.endpoint())
    out = r.stdout.decode()
    assert r.returncode == 0, (out, r.stderr)
    m = re.search(r"^datagrams: (\d+) sent, (\d+) received, 0 lost \(0%\), 0 duplicates, \d+ reordered, "
                  r"0 corrupted, 0 stray, 0 refused$", out, re.M)
    assert m and m.group(1) == m.group(2) == str(srv.received), out
    assert re.search(r"^rate: [\d.]+/s sent, [\d.]+/s received, [\d.]+ Mbit/s echoed, time [\d.]+ s$", out, re.M)
    assert re.search(r"^rtt p50/p90/p99/max = [\d.]+/[\d.]+/[\d.]+/[\d.]+ ms$", out, re.M)


def test_load_loss_counted_exactly():
    """A server that drops every third datagram: echoc's lost is exactly what it dropped (the
    window keeps the server's socket buffer from overflowing, so it saw everything sent)."""
    with DropThird() as srv:
        r, j = udp_json("--load", "--duration", 2, *srv.endpoint())
    end = j["end"]
    assert r.returncode == 1
    assert end["sent"] == srv.received and srv.dropped > 0
    assert end["lost"] == srv.dropped and end["received"] == srv.echoed
    assert end["loss_percent"] == pytest.approx(100 * srv.dropped / srv.received, abs=1e-5)
    check_load_json(j)


def test_load_every_misdeed_counted_exactly():
    with Mixed() as srv:
        r, j = udp_json("--load", "--duration", 2, *srv.endpoint())
    end = j["end"]
    assert r.returncode == 1
    assert end["sent"] == srv.received and srv.corrupted > 0 and srv.duplicated > 0
    assert (end["lost"], end["corrupted"], end["duplicates"], end["received"]) == (
        srv.dropped, srv.corrupted, srv.duplicated, srv.echoed)
    assert end["sent"] == end["received"] + end["lost"] + end["corrupted"]


def test_load_rate_and_window_are_caps():
    """--rate caps datagrams per second; --window caps those outstanding (a silent server answers
    none, so each -W frees the window once)."""
    with UdpServer() as srv:
        r, j = udp_json("--load", "--duration", 1, "--rate", 300, *srv.endpoint())
    assert r.returncode == 0 and j["start"]["test_start"]["rate"] == 300
    assert 0 < j["end"]["sent"] <= 301 and j["end"]["sent"] == srv.received
    with Silent() as srv:
        r, j = udp_json("--load", "--duration", 1, "--window", 5, "-W", "0.4", *srv.endpoint())
    assert r.returncode == 1
    sent = j["end"]["sent"]
    assert sent == srv.received and sent % 5 == 0 and 5 <= sent <= 15
    assert j["end"]["lost"] == sent and j["end"]["received"] == 0


def test_load_port_closed():
    port = free_port()
    r, j = udp_json("--load", "--duration", 1, "127.0.0.1", port)
    assert r.returncode == 1
    assert j["end"]["received"] == 0 and j["end"]["refused"] > 0 and j["end"]["lost"] == j["end"]["sent"]
    assert "Connection refused (ICMP port unreachable)" in j["error"]


def test_ping_interval_zero_never_runs_ahead_of_the_replies():
    """-i 0 sends each probe once the one before is settled (flood ping): 2000 probes at a
    single-threaded Python server lose none. (Sent back to back, most would overflow its socket
    buffer.)"""
    with UdpServer() as srv:
        r = run_echoc("--udp", "-c", 2000, "-i", 0, "-q", *srv.endpoint())
    assert r.returncode == 0, (r.stdout, r.stderr)
    lines, summ, _, _ = parse_ping(r.stdout)
    assert summ.groups()[:8] == ("2000", "2000", "0", "0", "0", "0", "0", "0")
    assert srv.received == 2000
    assert not any(LINE.match(l) for l in lines)  # -q: only the summary
