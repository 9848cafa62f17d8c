"""A fleet behind a load balancer: two echod hosts, each in a network namespace of its own, behind
one HAProxy that sends them PROXY v2 headers and health-checks them with tcp-check (the
configuration is read from the README, which shows it as the tested one). While clients run verified sessions through
HAProxy without pause, a rolling restart (SIGTERM to one host, start it again, then the other)
loses no verified byte and refuses no client: the draining host takes and echoes what its clients
already sent (its backlog, and bytes still on the wire), HAProxy marks it DOWN and sends new
connections to the other one."""
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import ROOT, free_port, sh, stop_process, wait_until
from test_proxy import HAPROXY

# name: (namespace, host-side veth, namespace-side veth, host address, echod's address)
HOSTS = {
    "a": ("echod-fleet-a", "vfla0", "vfla1", "10.208.1.1", "10.208.1.2"),
    "b": ("echod-fleet-b", "vflb0", "vflb1", "10.208.2.1", "10.208.2.2"),
}
PORT = 7000
CLIENTS = 6

def haproxy_config(sock, port):
    """The README's tested configuration ("Running a fleet behind a load balancer"), bound to
    127.0.0.1:port here, with a stats socket to read the servers' state."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme.split("## Running a fleet behind a load balancer", 1)[1]
    text = re.search(r"```\n(defaults.*?)```", section, re.S).group(1)
    assert "bind :7\n" in text, text
    for name, (*_, addr) in HOSTS.items():
        assert f"server {name} {addr}:{PORT}\n" in text, text
    return f"global\n    stats socket {sock} mode 600 level admin\n\n" + text.replace("bind :7\n", f"bind 127.0.0.1:{port}\n")


@pytest.fixture
def network():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 to create network namespaces")
    if not HAPROXY:
        pytest.skip("haproxy is not installed (tools/deps.sh test installs it)")

    def clean():
        for ns, dev, *_ in HOSTS.values():
            sh("ip", "netns", "del", ns, check=False)
            sh("ip", "link", "del", dev, check=False)
    clean()
    try:
        for ns, outer, inner, host, addr in HOSTS.values():
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
            sh("ip", "addr", "add", f"{host}/30", "dev", outer)
            sh("ip", "link", "set", outer, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{addr}/30", "dev", inner)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", inner, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield
    finally:
        clean()


class Balancer:
    def __init__(self, directory):
        self.sock = os.path.join(directory, "haproxy.sock")
        self.port = free_port()
        cfg = os.path.join(directory, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(haproxy_config(self.sock, self.port))
        self.log = open(os.path.join(directory, "haproxy.log"), "wb")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", cfg], stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_until(lambda: os.path.exists(self.sock) or self.proc.poll() is not None, 10, "haproxy's stats socket")
        assert self.proc.poll() is None, open(self.log.name).read()

    def command(self, line):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.sock)
            s.sendall(line.encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode()

    def state(self, server):
        """'UP' or 'DOWN', from `show servers state` (srv_op_state 2 = running)."""
        for line in self.command("show servers state echod").splitlines():
            f = line.split()
            if len(f) > 5 and not line.startswith("#") and f[3] == server:
                return "UP" if f[5] == "2" else "DOWN"
        return "?"

    def wait(self, server, state, timeout=15):
        wait_until(lambda: self.state(server) == state, timeout, f"haproxy to see server {server} {state}")

    def stop(self):
        stop_process(self.proc, self.log)


class Clients:
    """CLIENTS threads, each running sessions back to back through the balancer until stopped: a
    fresh connection, 1 B to 16 KiB of random bytes, the write side closed, the echo read to EOF
    and compared. Any error, short or wrong echo is a failure."""

    def __init__(self, port):
        self.port = port
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.sessions = 0
        self.failures = []
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(CLIENTS)]
        for t in self.threads:
            t.start()

    def session(self, rng):
        data = rng.randbytes(rng.randint(1, 16384))
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := s.recv(65536):
                got += chunk
        if got != data:
            raise AssertionError(f"echo of {len(data)} bytes came back as {len(got)} bytes"
                                 + ("" if len(got) != len(data) else " (different)"))

    def run(self, i):
        rng = random.Random(i)
        while not self.stop_ev.is_set():
            try:
                self.session(rng)
                with self.lock:
                    self.sessions += 1
            except Exception as e:  # noqa: BLE001 - every kind of failure is the finding
                with self.lock:
                    self.failures.append(f"{time.monotonic():.3f} client {i}: {type(e).__name__}: {e}")

    def count(self):
        with self.lock:
            return self.sessions

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(30)


def start_host(echod_factory, name):
    ns, _, _, host, addr = HOSTS[name]
    e = echod_factory(start=False, listen=f'"{addr}:{PORT} proxy"', proxy_trusted=f'{{"{host}/32"}}',
                      max_per_source=0, log_connections="false", control_socket='""')
    e.wrapper = ["ip", "netns", "exec", ns]
    e.start()
    return e


def test_rolling_restart_loses_nothing(network, echod_factory, tmpdir_path):
    hosts = {name: start_host(echod_factory, name) for name in HOSTS}
    lb = Balancer(tmpdir_path)
    clients = None
    try:
        lb.wait("a", "UP")
        lb.wait("b", "UP")
        clients = Clients(lb.port)
        wait_until(lambda: clients.count() >= 200, 30, "sessions through the balancer")
        for name in HOSTS:
            before = clients.count()
            hosts[name].proc.send_signal(signal.SIGTERM)
            assert hosts[name].proc.wait(timeout=20) == 0, hosts[name].log()[-2000:]
            lb.wait(name, "DOWN")
            # the other host alone serves meanwhile
            wait_until(lambda b=before: clients.count() >= b + 100, 30, f"sessions while {name} is down")
            hosts[name] = start_host(echod_factory, name)
            lb.wait(name, "UP")
            wait_until(lambda b=before: clients.count() >= b + 300, 30, f"sessions after {name} is back")
        clients.stop()
        assert clients.failures == [], f"{len(clients.failures)} of {clients.count()} sessions failed:\n" + \
            "\n".join(clients.failures[:20])
        assert clients.count() >= 800
    finally:
        if clients:
            clients.stop()
        lb.stop()
