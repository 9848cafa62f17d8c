"""PROXY protocol v1/v2 on echod's listeners: through a real HAProxy (send-proxy, send-proxy-v2)
started by the test, and from hand-made headers. Limits and logs are keyed on the proxied client;
untrusted senders, garbage and silence are refused without a fork; the header is consumed exactly.

Every client binds its own loopback source (127.0.0.2, 127.0.0.3 ...), so the address HAProxy
forwards differs from HAProxy's own (127.0.0.1)."""
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import time

import pytest

from conftest import connect_from, cpu_seconds, echo_roundtrip, free_port, ping, refused, stop_process
from echo_servers import run_echoc

pytestmark = pytest.mark.timeout(60)

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


# ---- helpers ----------------------------------------------------------------------------------

def v1_header(src, dst):
    """src, dst: (ip, port); both IPv4 or both IPv6."""
    fam = "TCP6" if ":" in src[0] else "TCP4"
    return f"PROXY {fam} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


def v2_header(src, dst, command=0x21):
    if ":" in src[0]:
        fam, af = 0x21, socket.AF_INET6
    else:
        fam, af = 0x11, socket.AF_INET
    block = socket.inet_pton(af, src[0]) + socket.inet_pton(af, dst[0]) + struct.pack("!HH", src[1], dst[1])
    return V2_SIGNATURE + bytes([command, fam]) + struct.pack("!H", len(block)) + block


V2_LOCAL = V2_SIGNATURE + b"\x20\x00\x00\x00"
V1_UNKNOWN = b"PROXY UNKNOWN\r\n"
HEADERS = {"v1": v1_header, "v2": v2_header}








def wait_closed(s, timeout):
    """Seconds until the peer closes (EOF or reset), reading nothing else; fails after timeout."""
    start = time.monotonic()
    s.settimeout(timeout)
    try:
        data = s.recv(100)
    except ConnectionResetError:
        data = b""
    except socket.timeout:
        pytest.fail(f"still open after {timeout} s")
    assert data == b"", f"got data instead of a close: {data!r}"
    return time.monotonic() - start


def still_open_after(s, seconds):
    """Poll (not sleep): True if nothing arrived and the peer did not close within seconds."""
    r, _, _ = select.select([s], [], [], seconds)
    return not r


def listeners(e):
    """The (host, port) pairs in echod's STATUS "listening on ..." (whatever follows an address)."""
    m = re.search(r"listening on (.*)$", e.status or "")
    assert m, f"no listeners in STATUS {e.status!r}"
    return [(h.strip("[]"), int(p)) for h, p in re.findall(r"(\[[0-9a-fA-F:.]+\]|\d+\.\d+\.\d+\.\d+):(\d+)", m.group(1))]


def listener(e, host="127.0.0.1"):
    for h, p in listeners(e):
        if h == host:
            return (h, p)
    raise AssertionError(f"no listener on {host} in {e.status!r}")


def proxied_echod(echod_factory, **keys):
    """echod whose one listener requires a PROXY header (the per-listener form)."""
    keys.setdefault("listen", '"127.0.0.1:0 proxy"')
    keys.setdefault("max_per_source", 0)
    return echod_factory(**keys)


# ---- HAProxy ----------------------------------------------------------------------------------

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)



def listening_inodes(port):
    """Socket inodes in LISTEN on 127.0.0.1:port (from /proc/net/tcp: no connection made)."""
    want = f"0100007F:{port:04X}"
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":
                inodes.add(fields[9])
    return inodes


class HAProxy:
    """haproxy -db with one frontend per PROXY version, each forwarding to echod's proxy listener.

    Readiness: the frontends' sockets are in LISTEN and belong to this haproxy, polled with a
    deadline. Not a probe connection: in TCP mode HAProxy would forward it to echod, which would
    then count and log a connection the test did not make."""

    def __init__(self, directory, backend, versions=("v1", "v2")):
        self.dir = directory
        self.backend = backend
        self.versions = versions
        self.proc = None
        self.frontends = {}
        self.log_path = os.path.join(directory, "haproxy.log")

    def config(self):
        text = ["global", "    maxconn 256", "",
                "defaults", "    mode tcp", "    timeout connect 5s", "    timeout client 30s",
                "    timeout server 30s", ""]
        for v, port in self.frontends.items():
            opt = "send-proxy" if v == "v1" else "send-proxy-v2"
            text += [f"frontend fe_{v}", f"    bind 127.0.0.1:{port}", f"    default_backend be_{v}", "",
                     f"backend be_{v}", f"    server echod {self.backend[0]}:{self.backend[1]} {opt}", ""]
        return "\n".join(text)

    def start(self, timeout=10.0):
        for attempt in range(3):  # a picked port can be taken before haproxy binds it
            self.frontends = {v: free_port() for v in self.versions}
            cfg = os.path.join(self.dir, "haproxy.cfg")
            with open(cfg, "w") as f:
                f.write(self.config())
            self.log = open(self.log_path, "ab")
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", cfg], stdin=subprocess.DEVNULL,
                                         stdout=self.log, stderr=self.log)
            if self._wait_listening(timeout):
                return self
            self.stop()
        raise AssertionError(f"haproxy did not start; log:\n{self.read_log()}")

    def _wait_listening(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                fds = {os.readlink(f"/proc/{self.proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{self.proc.pid}/fd")}
            except (FileNotFoundError, ProcessLookupError):
                fds = set()
            if all(any(f"socket:[{i}]" in fds for i in listening_inodes(p)) for p in self.frontends.values()):
                return True
            time.sleep(0.02)
        return False

    def frontend(self, version):
        return ("127.0.0.1", self.frontends[version])

    def read_log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self):
        if self.proc:
            stop_process(self.proc, self.log)


@pytest.fixture
def haproxy_factory(tmpdir_path):
    if not HAPROXY:
        pytest.skip("haproxy is not installed (tools/deps.sh test installs it)")
    started = []

    def make(backend, versions=("v1", "v2")):
        h = HAProxy(tmpdir_path, backend, versions)
        started.append(h)
        return h.start()

    yield make
    for h in started:
        h.stop()


# ---- through HAProxy --------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["v1", "v2"])
def test_echo_through_haproxy_names_the_proxied_client(echod_factory, haproxy_factory, version):
    e = proxied_echod(echod_factory)
    hap = haproxy_factory(listener(e))
    data = os.urandom(200_000)
    s = connect_from(hap.frontend(version), "127.0.0.2")
    client_port = s.getsockname()[1]
    assert echo_roundtrip(s, data) == data
    s.close()
    (via,) = e.wait_log(rf"^.*connection 127\.0\.0\.2:{client_port} via (127\.0\.0\.1:\d+) closed: clean, "
                        rf"{len(data)} bytes in, {len(data)} bytes out")
    # "via" is HAProxy's own socket towards echod, not its frontend
    assert via != f"127.0.0.1:{hap.frontends[version]}"


def test_per_source_limit_keyed_on_proxied_address(echod_factory, haproxy_factory):
    """All of HAProxy's connections come from 127.0.0.1; only the proxied address tells clients apart."""
    e = proxied_echod(echod_factory, max_connections=10, max_per_source=1)
    hap = haproxy_factory(listener(e))
    for version in ("v1", "v2"):
        first = connect_from(hap.frontend(version), "127.0.0.2")
        assert ping(first)
        second = connect_from(hap.frontend(version), "127.0.0.2")
        assert refused(second)
        other = connect_from(hap.frontend(version), "127.0.0.3")
        assert ping(other)
        assert ping(first, os.urandom(10_000))
        for s in (first, second, other):
            s.close()
        # both admitted ones are reaped before the next round reuses the sources
        e.wait_log(r"connection 127\.0\.0\.3:\d+ via 127\.0\.0\.1:\d+ closed", count=1 if version == "v1" else 2)
        e.wait_log(r"connection 127\.0\.0\.2:\d+ via 127\.0\.0\.1:\d+ closed", count=1 if version == "v1" else 2)
    e.wait_log(r"refused connection from 127\.0\.0\.2:\d+ via 127\.0\.0\.1:\d+: "
               r"per-source \(max_per_source=1 reached for 127\.0\.0\.2/32\)")
    e.wait_status(lambda st: re.search(r"per-source 2\b", st) is not None)


def test_untrusted_sender_refused(echod_factory, haproxy_factory):
    e = proxied_echod(echod_factory, proxy_trusted='{"127.0.0.9/32"}')
    hap = haproxy_factory(listener(e))
    for version in ("v1", "v2"):
        s = connect_from(hap.frontend(version), "127.0.0.2")
        assert refused(s)
        s.close()
    # refusal logs are summarised: the first is a line of its own, the count is in STATUS=
    e.wait_log(r"refused connection from 127\.0\.0\.1:\d+: proxy \(untrusted sender\)")
    # at least one refusal per client; HAProxy may retry a connection that was reset under it
    e.wait_status(lambda st: int(re.search(r"proxy (\d+)", st).group(1)) >= 2)
    assert " 0 accepted" in e.current_status()
    assert e.children() == []  # refused before fork
    assert "127.0.0.2" not in e.log()  # the header of an untrusted sender is never believed

    # the trusted address is the sender's, whatever it claims
    s = connect_from(listener(e), "127.0.0.9")
    assert echo_roundtrip(s, v1_header(("198.51.100.7", 4242), ("127.0.0.1", 7)) + b"x") == b"x"
    s.close()
    e.wait_log(r"connection 198\.51\.100\.7:4242 via 127\.0\.0\.9:\d+ closed: clean, 1 bytes in, 1 bytes out")


# ---- direct clients ---------------------------------------------------------------------------

def test_garbage_refused_at_once(echod_factory):
    """Bytes that cannot start a header are refused when they arrive, not after proxy_timeout."""
    e = proxied_echod(echod_factory, proxy_timeout=20)
    for garbage in (b"GET / HTTP/1.0\r\n\r\n", b"\x16\x03\x01\x00\xa5\x01", b"PROXY TCP4 1.2.3.4  x",
                    V2_SIGNATURE + b"\x31\x11\x00\x0c"):
        s = connect_from(listener(e), "127.0.0.1")
        s.sendall(garbage)
        assert wait_closed(s, 5) < 3
        s.close()
    e.wait_log(r"refused connection from 127\.0\.0\.1:\d+: proxy \(malformed header\)")
    e.wait_status(lambda st: re.search(r"proxy 4\b", st) is not None)
    assert e.children() == []


def test_silent_or_partial_client_times_out(echod_factory):
    e = proxied_echod(echod_factory, proxy_timeout=1)
    silent = connect_from(listener(e), "127.0.0.1")
    partial = connect_from(listener(e), "127.0.0.1")
    partial.sendall(b"PROXY TCP4 127.0.0.2 127.0.0.1 ")
    start = time.monotonic()
    for s in (silent, partial):
        wait_closed(s, 5)
        s.close()
    took = time.monotonic() - start
    assert 0.8 < took < 3, f"closed after {took:.2f} s, proxy_timeout = 1"
    e.wait_log(r"refused connection from 127\.0\.0\.1:\d+: proxy \(no header within 1 s\)")
    e.wait_status(lambda st: re.search(r"proxy 2\b", st) is not None)
    assert e.children() == []



def test_pending_partial_header_costs_no_cpu(echod_factory):
    """A valid prefix waiting for the rest must not make the master spin on a readable fd (a
    level-triggered watch on bytes it only peeks at would wake it continuously until proxy_timeout)."""
    e = proxied_echod(echod_factory, proxy_timeout=10)
    held = [connect_from(listener(e), "127.0.0.1") for _ in range(3)]
    for s in held:
        s.sendall(b"PROXY TCP4 127.0.0.")
    assert all(still_open_after(s, 0.1) for s in held)
    cpu0, t0 = cpu_seconds(e.proc.pid), time.monotonic()
    assert still_open_after(held[0], 1.5)  # a bounded window, polled
    used = (cpu_seconds(e.proc.pid) - cpu0) / (time.monotonic() - t0)
    assert used < 0.2, f"master used {used:.0%} CPU while headers were pending"
    # and they still complete
    for i, s in enumerate(held):
        s.sendall(f"{10 + i} 127.0.0.1 {1000 + i} 7\r\n".encode())
        assert ping(s)
        s.close()
    e.wait_log(r"connection 127\.0\.0\.12:1002 via 127\.0\.0\.1:\d+ closed: clean")


@pytest.mark.parametrize("version,source,logged", [
    ("v1", "203.0.113.7:51234", r"203\.0\.113\.7:51234"),
    ("v2", "203.0.113.7:51234", r"203\.0\.113\.7:51234"),
    ("v2", "[2001:db8::7]:4242", r"\[2001:db8::7\]:4242"),
])
def test_echoc_proxy_direct(echod_factory, version, source, logged):
    """echoc --proxy against a listener made a proxy one by the global key."""
    e = echod_factory(proxy_protocol="true", max_per_source=0)
    host, port = listener(e)
    data = os.urandom(50_000)
    r = run_echoc("--proxy", version, "--proxy-source", source, host, port, input=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout == data
    e.wait_log(rf"connection {logged} via 127\.0\.0\.1:\d+ closed: clean, {len(data)} bytes in")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_header_split_across_segments(echod_factory, version):
    e = proxied_echod(echod_factory, proxy_timeout=5)
    s = connect_from(listener(e), "127.0.0.1")
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    header = HEADERS[version](("127.0.0.7", 7777), ("127.0.0.1", listener(e)[1]))
    half = len(header) // 2
    s.sendall(header[:half])
    # the master holds a valid prefix and waits: no close within a short poll
    assert still_open_after(s, 0.3)
    s.sendall(header[half:] + b"payload")
    s.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        got += b
    assert got == b"payload"
    s.close()
    e.wait_log(r"connection 127\.0\.0\.7:7777 via 127\.0\.0\.1:\d+ closed: clean, 7 bytes in, 7 bytes out")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_header_consumed_exactly(echod_factory, version):
    """Payload in the same segment as the header is echoed, even when it looks like a header."""
    e = proxied_echod(echod_factory)
    dst = ("127.0.0.1", listener(e)[1])
    payload = HEADERS[version](("192.0.2.99", 9), dst) + os.urandom(1000) + V1_UNKNOWN
    s = connect_from(listener(e), "127.0.0.1")
    got = echo_roundtrip(s, HEADERS[version](("127.0.0.8", 8888), dst) + payload)
    assert got == payload
    s.close()
    e.wait_log(rf"connection 127\.0\.0\.8:8888 via 127\.0\.0\.1:\d+ closed: clean, {len(payload)} bytes in")
    assert "192.0.2.99" not in e.log()


@pytest.mark.parametrize("header", [V1_UNKNOWN, V2_LOCAL], ids=["v1-unknown", "v2-local"])
def test_unknown_and_local_use_socket_addresses(echod_factory, header):
    e = proxied_echod(echod_factory, max_per_source=1, proxy_trusted='{"127.0.0.4/32"}')
    s = connect_from(listener(e), "127.0.0.4")
    port = s.getsockname()[1]
    s.sendall(header)
    assert ping(s)
    # the socket's address is the key for limits too
    t = connect_from(listener(e), "127.0.0.4")
    t.sendall(header)
    assert refused(t)
    t.close()
    s.close()
    e.wait_log(rf"connection 127\.0\.0\.4:{port}( via 127\.0\.0\.4:{port})? closed: clean, 4 bytes in")


def test_plain_listener_beside_a_proxy_one_never_guesses(echod_factory):
    """A header sent to a listener without proxy is payload: never auto-detected."""
    e = echod_factory(listen='"127.0.0.1:0 proxy", "127.0.0.5:0"', max_per_source=0)
    header = v1_header(("198.51.100.1", 1), ("127.0.0.5", 7))
    s = connect_from(listener(e, "127.0.0.5"), "127.0.0.1")
    assert echo_roundtrip(s, header + b"x") == header + b"x"
    s.close()
    # and the proxy listener still requires one
    s = connect_from(listener(e, "127.0.0.1"), "127.0.0.1")
    s.sendall(b"x")
    wait_closed(s, 5)
    s.close()
    e.wait_log(r"connection 127\.0\.0\.1:\d+ closed: clean, \d+ bytes in")
    e.wait_log(r"refused connection from 127\.0\.0\.1:\d+: proxy \(malformed header\)")
    assert "198.51.100.1" not in e.log()
