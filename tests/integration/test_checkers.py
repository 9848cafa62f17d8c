"""The health checkers operators already run pass against echod, and fail against a broken echo
server: each is the real tool from Debian's packages, installed by the test when missing (a test
skips, naming why, only when it cannot be had).

  check_tcp (monitoring-plugins-basic)   send a line, expect it back: "TCP OK", exit 0, over IPv4
                                         and IPv6; exit 2 (CRITICAL) against the broken server
  blackbox exporter (tcp, query_response) probe_success 1 against echod; 0 against the broken one
  HAProxy (option tcp-check, send/expect) the server is UP on a plain listener and DOWN for the
                                         broken one; on a listener that requires a PROXY header
                                         it is UP with check-send-proxy, DOWN without it, and
                                         echod logs the reason for those refusals once, not once
                                         per check

The broken server (echo_servers.EchoServer "reverse") accepts, answers the first chunk with its
bytes reversed and closes: every checker connects and sends fine, so it can only fail on the
step that compares the answer, which is what the pass against echod then proves to be checked.
"""
import csv
import io
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import need, stop_process
from echo_servers import EchoServer

pytestmark = pytest.mark.timeout(60)

CHECK_TCP = "/usr/lib/nagios/plugins/check_tcp"
BLACKBOX = "/usr/bin/prometheus-blackbox-exporter"
HAPROXY = "/usr/sbin/haproxy"

CHECK_LINE = "echod-check"
PROBE_LINE = "echod-probe"


def ipv6_loopback():
    """True if this machine can bind [::1] (a container may have IPv6 off)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


FAMILIES = [
    pytest.param(socket.AF_INET, id="ipv4"),
    pytest.param(socket.AF_INET6, id="ipv6",
                 marks=pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback ([::1]) here")),
]


def echod_on(echod_factory, family, **keys):
    if family == socket.AF_INET6:
        keys.setdefault("listen", '"[::1]:0"')
    e = echod_factory(**keys)
    return e, e.endpoint(family)


def listening_port(proc):
    """The TCP port proc listens on on loopback, from /proc (no connection made), or None."""
    try:
        fds = {os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{proc.pid}/fd")}
    except (FileNotFoundError, ProcessLookupError):
        return None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and local.startswith("0100007F:") and f"socket:[{inode}]" in fds:
                return int(local.split(":")[1], 16)
    return None


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


# ---- check_tcp (monitoring-plugins) -----------------------------------------------------------

@pytest.fixture
def check_tcp():
    binary = need("monitoring-plugins-basic", CHECK_TCP)

    def run(host, port):
        # -E before -s: "\n" in the send string is a newline; -M crit: a mismatch is CRITICAL
        cmd = [binary, "-H", host, "-p", str(port), "-E", "-s", CHECK_LINE + "\\n", "-e", CHECK_LINE,
               "-M", "crit", "-t", "10"]
        if ":" in host:
            cmd.append("-6")
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return run


@pytest.mark.parametrize("family", FAMILIES)
def test_check_tcp_ok_against_echod(echod_factory, check_tcp, family):
    e, (host, port) = echod_on(echod_factory, family)
    r = check_tcp(host, port)
    assert r.returncode == 0 and r.stdout.startswith("TCP OK"), f"exit {r.returncode}: {r.stdout}{r.stderr}"
    # the plugin's connection was echod's: the line in and out, closed cleanly
    n = len(CHECK_LINE) + 1
    e.wait_log(rf"connection {re.escape(host if family == socket.AF_INET else f'[{host}]')}:\d+ closed: "
               rf"clean, {n} bytes in, {n} bytes out")


@pytest.mark.parametrize("family", FAMILIES)
def test_check_tcp_critical_against_broken_server(check_tcp, family):
    with EchoServer("reverse", family=family) as broken:
        r = check_tcp(*broken.endpoint())
    assert r.returncode == 2, f"exit {r.returncode}: {r.stdout}{r.stderr}"
    assert r.stdout.startswith("TCP CRITICAL"), r.stdout
    assert "Unexpected response" in r.stdout, r.stdout  # it failed on the expect step, not before
    assert broken.connections == 1


# ---- Prometheus blackbox exporter -------------------------------------------------------------

BLACKBOX_CONFIG = f"""\
modules:
  echo:
    prober: tcp
    timeout: 5s
    tcp:
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
      query_response:
        - send: "{PROBE_LINE}"
        - expect: "^{PROBE_LINE}$"
"""


class Blackbox:
    """prometheus-blackbox-exporter on 127.0.0.1, port 0 (read back from /proc: no race)."""

    def __init__(self, binary, directory):
        self.config = os.path.join(directory, "blackbox.yml")
        with open(self.config, "w") as f:
            f.write(BLACKBOX_CONFIG)
        self.log_path = os.path.join(directory, "blackbox.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([binary, f"--config.file={self.config}", "--web.listen-address=127.0.0.1:0",
                                      "--log.level=debug"],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        self.port = None

    def wait_ready(self, timeout=20.0):
        """Until it listens and answers /-/healthy (its config is loaded before it listens)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            self.port = self.port or listening_port(self.proc)
            if self.port:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/healthy", timeout=2) as r:
                        if r.status == 200:
                            return self
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(0.05)
        raise AssertionError(f"blackbox exporter not ready (exit {self.proc.poll()}); log:\n{read(self.log_path)}")

    def probe(self, target):
        """GET /probe; returns (probe_success, the whole answer). debug=true puts the probe's own
        log in the answer, so a failure says which step failed."""
        url = f"http://127.0.0.1:{self.port}/probe?module=echo&target={target}"
        with urllib.request.urlopen(url, timeout=15) as r:
            metrics = r.read().decode()
        with urllib.request.urlopen(url + "&debug=true", timeout=15) as r:
            debug = r.read().decode()
        m = re.search(r"^probe_success (\S+)$", metrics, re.M)
        assert m, f"no probe_success in:\n{metrics}"
        return float(m.group(1)), debug

    def stop(self):
        stop_process(self.proc, self.log)


@pytest.fixture
def blackbox(tmpdir_path):
    binary = need("prometheus-blackbox-exporter", BLACKBOX)
    b = Blackbox(binary, tmpdir_path)
    try:
        yield b.wait_ready()
    finally:
        b.stop()


def test_blackbox_probe_success_against_echod(echod, blackbox):
    host, port = echod.endpoint()
    success, debug = blackbox.probe(f"{host}:{port}")
    assert success == 1, debug
    n = len(PROBE_LINE) + 1  # the exporter ends what it sends with "\n"
    echod.wait_log(rf"connection 127\.0\.0\.1:\d+ closed: [\w-]+, {n} bytes in, {n} bytes out", count=2)


def test_blackbox_probe_fails_against_broken_server(blackbox):
    with EchoServer("reverse") as broken:
        success, debug = blackbox.probe("%s:%d" % broken.endpoint())
    assert success == 0, debug
    # it failed on the expect step: the connection was made and the line sent
    assert re.search(r"did not match", debug, re.I), debug
    assert broken.connections == 2


# ---- HAProxy tcp-check ------------------------------------------------------------------------

class HAProxyChecks:
    """haproxy -db with one backend, one server and tcp-check health checks every 100 ms; the
    server's state is read from its admin stats socket."""

    def __init__(self, binary, directory, server, options=""):
        self.dir = directory
        self.sock_path = os.path.join(directory, "haproxy.sock")
        self.cfg = os.path.join(directory, "haproxy.cfg")
        self.log_path = os.path.join(directory, "haproxy.log")
        with open(self.cfg, "w") as f:
            f.write("\n".join([
                "global",
                f"    stats socket {self.sock_path} level admin",
                "defaults",
                "    mode tcp",
                "    timeout connect 2s",
                "    timeout client 10s",
                "    timeout server 10s",
                "    timeout check 2s",
                "backend be_echo",
                "    option tcp-check",
                f"    tcp-check send {CHECK_LINE}\\n",
                f"    tcp-check expect string {CHECK_LINE}",
                # rise 1 / fall 1: one check decides, so the state follows the last check
                f"    server echod {server[0]}:{server[1]} check inter 100ms rise 1 fall 1 {options}",
                ""]))
        r = subprocess.run([binary, "-c", "-f", self.cfg], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"haproxy rejects the config:\n{r.stdout}{r.stderr}"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([binary, "-db", "-f", self.cfg], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log)

    def command(self, cmd, timeout=5.0):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(self.sock_path)
            s.sendall(cmd.encode() + b"\n")
            out = b""
            while True:
                b = s.recv(65536)
                if not b:
                    return out.decode(errors="replace")
                out += b

    def wait_ready(self, timeout=10.0):
        """Until the stats socket answers (a connection to echod would be a check of its own)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if "be_echo" in self.command("show stat"):
                    return self
            except OSError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"haproxy not ready (exit {self.proc.poll()}); log:\n{read(self.log_path)}")

    def server(self):
        """The server's row of 'show stat' (status, check_status, last_chk, chkfail ...)."""
        text = self.command("show stat").lstrip("# ")
        for row in csv.DictReader(io.StringIO(text)):
            if row["pxname"] == "be_echo" and row["svname"] == "echod":
                return row
        raise AssertionError(f"no be_echo/echod in show stat:\n{text}")

    def wait_state(self, status, check_status, timeout=10.0):
        """Until the server is `status` after a completed check whose result is check_status (or
        one of them, given a tuple)."""
        wanted = check_status if isinstance(check_status, tuple) else (check_status,)
        deadline = time.monotonic() + timeout
        row = None
        while time.monotonic() < deadline:
            row = self.server()
            if row["status"] == status and row["check_status"] in wanted:
                return row
            time.sleep(0.05)
        raise AssertionError(f"server never {status} with check {check_status}; last: "
                             f"{ {k: row.get(k) for k in ('status', 'check_status', 'last_chk')} if row else None}\n"
                             f"haproxy log:\n{read(self.log_path)}")

    def stop(self):
        stop_process(self.proc, self.log)


@pytest.fixture
def haproxy_checks(tmpdir_path):
    binary = need("haproxy", HAPROXY)
    started = []

    def make(server, options=""):
        d = os.path.join(tmpdir_path, f"haproxy{len(started)}")
        os.mkdir(d)
        h = HAProxyChecks(binary, d, server, options)
        started.append(h)
        return h.wait_ready()

    yield make
    for h in started:
        h.stop()


def accepted(status):
    return int(re.search(r"(\d+) accepted", status).group(1))


def refused_proxy(status):
    return int(re.search(r"proxy (\d+)", status).group(1))


def test_haproxy_tcp_check_up_against_echod(echod, haproxy_checks):
    hap = haproxy_checks(echod.endpoint())
    hap.wait_state("UP", "L7OK")
    # and it stays UP over further checks (chkfail counts each check that failed while UP)
    echod.wait_status(lambda st: accepted(st) >= 10)
    row = hap.wait_state("UP", "L7OK")
    assert row["chkfail"] == "0" and row["chkdown"] == "0", row
    n = len(CHECK_LINE) + 1
    echod.wait_log(rf"connection 127\.0\.0\.1:\d+ closed: [\w-]+, {n} bytes in, {n} bytes out", count=10)


def test_haproxy_tcp_check_down_against_broken_server(haproxy_checks):
    with EchoServer("reverse") as broken:
        hap = haproxy_checks(broken.endpoint())
        # L7RSP: the server answered, but not what tcp-check expect wanted
        row = hap.wait_state("DOWN", "L7RSP")
        assert broken.connections >= 1
    assert "did not match" in row["last_chk"], row


def proxied_echod(echod_factory):
    """echod whose every listener requires a PROXY header, trusting only 127.0.0.1 (HAProxy)."""
    return echod_factory(proxy_protocol="true", proxy_trusted='{"127.0.0.1/32"}')


# HAProxy sends the header on its checks when the server line has send-proxy*, unless the checks
# have a "port" or "addr" of their own: then only check-send-proxy does (its documentation).
@pytest.mark.parametrize("options", [
    pytest.param("send-proxy-v2 port {port} check-send-proxy", id="v2-check-send-proxy"),
    pytest.param("send-proxy port {port} check-send-proxy", id="v1-check-send-proxy"),
    pytest.param("send-proxy-v2", id="v2-inherited"),  # checks inherit the server's PROXY protocol
])
def test_haproxy_check_send_proxy_up_on_proxy_listener(echod_factory, haproxy_checks, options):
    e = proxied_echod(echod_factory)
    host, port = e.endpoint()
    hap = haproxy_checks((host, port), options.format(port=port))
    hap.wait_state("UP", "L7OK")
    e.wait_status(lambda st: accepted(st) >= 10)
    row = hap.wait_state("UP", "L7OK")
    assert row["chkfail"] == "0" and row["chkdown"] == "0", row
    n = len(CHECK_LINE) + 1
    # v1 names HAProxy's own socket as the client ("via" itself); v2 checks send LOCAL
    e.wait_log(rf"connection 127\.0\.0\.1:\d+( via 127\.0\.0\.1:\d+)? closed: [\w-]+, {n} bytes in, {n} bytes out",
               count=10)
    assert "refused connection" not in e.log(), e.log()


REFUSAL_LINE = r"^.*refused connection from 127\.0\.0\.1:\d+: proxy \((.*)\)$"


@pytest.mark.parametrize("options", [
    # the traffic would carry a header; checks on a port of their own do not
    pytest.param("send-proxy-v2 port {port}", id="v2-without-check-send-proxy"),
    pytest.param("", id="no-proxy-protocol"),
])
def test_haproxy_check_without_header_down_refusal_logged_once(echod_factory, haproxy_checks, options):
    """The check sends its line where echod wants a PROXY header: refused, so the server is DOWN;
    echod logs why once for the window (10 s), not once per check."""
    e = proxied_echod(echod_factory)
    host, port = e.endpoint()
    start = time.monotonic()  # the refusal window opens after this
    hap = haproxy_checks((host, port), options.format(port=port))
    (reason,) = e.wait_log(REFUSAL_LINE)
    first = time.monotonic()
    assert reason == "malformed header", e.log()
    # echod closes with the check's line unread: the kernel resets (SOCKERR); L7RSP if it FINs
    row = hap.wait_state("DOWN", ("SOCKERR", "L7RSP"))
    # at least 10 checks refused (inter 100ms: about a second) ...
    e.wait_status(lambda st: refused_proxy(st) >= 10, timeout=5)
    # ... and, a fixed measurement interval rather than a readiness wait, 2 s of checks in all
    time.sleep(max(0.0, 2.0 - (time.monotonic() - first)))
    lines = re.findall(REFUSAL_LINE, e.log(), re.M)
    refused = refused_proxy(e.current_status())
    # the whole measurement fell inside the 10 s window that the first refusal opened
    assert time.monotonic() - start < 9.5, "the measurement overran the 10 s window"
    assert lines == ["malformed header"], f"{len(lines)} refusal lines for {refused} refusals:\n{e.log()}"
    assert "more connections in" not in e.log()  # the summary comes when the window closes
    assert refused >= 10
    row = hap.server()
    assert row["status"] == "DOWN", row  # (chkfail counts only the failures of an UP server)
    assert " 0 accepted" in e.current_status()
    assert e.children() == []  # refused before fork
