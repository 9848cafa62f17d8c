"""UDP echo (listen_udp): served by one sandboxed worker per socket, answered byte for byte from the
address asked, and never a reflector: ACL, reflector ports, port 0, per-source and service-wide
buckets, size; drops counted by reason in status and the log; reload without a gap, a crashed
worker replaced, SIGTERM, socket activation. Network-namespace scenarios (spoofed floods, loops,
multi-homed hosts) are in test_udp_netns.py."""
import glob
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import ECHOC, ECHOD, base_config, free_port, need, proc_comm, sanitized, wait_until
import syscall_inject
import udp_tools


def udp_config(listen_udp='"127.0.0.1:0"', **keys):
    keys.setdefault("listen_udp", "{" + listen_udp + "}")
    # a control socket of the test's own (the same through its reloads): `echod status` must ask
    # this echod, whatever else runs here
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    tag = hashlib.sha1(test.encode()).hexdigest()[:12]
    keys.setdefault("control_socket", f'"/run/echod-test-udp-{os.getpid()}-{tag}.sock"')
    return base_config(**keys)


@pytest.fixture(autouse=True, scope="module")
def _remove_control_sockets():
    """echod, running as nobody, cannot remove its socket from /run: we do."""
    yield
    for path in glob.glob(f"/run/echod-test-udp-{os.getpid()}-*.sock"):
        os.unlink(path)


def status(e, fmt="json"):
    out = subprocess.run([ECHOD, "-f", e.conf_path, "status", f"--format={fmt}"], capture_output=True, text=True,
                         timeout=10, check=True).stdout
    return json.loads(out) if fmt == "json" else out


def udp_endpoints(e):
    """The UDP sockets echod reported in its log: [(host, port)]."""
    found = re.findall(r"listening on UDP (\S+)", e.log())
    out = []
    for a in found:
        host, port = a.rsplit(":", 1)
        out.append((host.strip("[]"), int(port)))
    return out


def udp_endpoint(e, family=socket.AF_INET):
    for host, port in udp_endpoints(e):
        if (":" in host) == (family == socket.AF_INET6):
            return host, port
    raise AssertionError(f"no UDP socket of family {family}: {e.log()}")


def worker_pids(e):
    """The UDP workers: processes titled 'echod: udp ADDR'."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0]
            with open(f"/proc/{pid}/status") as f:
                ppid = int(re.search(r"PPid:\s+(\d+)", f.read()).group(1))
        except (FileNotFoundError, ProcessLookupError, AttributeError):
            continue
        if title.startswith(b"echod: udp ") and (ppid == e.proc.pid or ppid in master_kids(e)):
            pids.append(int(pid))
    return pids


def master_kids(e):
    return e._kids(e.proc.pid)


def wait_workers(e, n=1):
    """The n workers, once forked (READY=1 comes before the spawner has forked them)."""
    wait_until(lambda: len(worker_pids(e)) == n, 10, f"{n} UDP worker(s)")
    return worker_pids(e)


def wait_udp_counts(e, pred, timeout=10.0, what="UDP counters"):
    st = {}

    def ok():
        nonlocal st
        st = status(e)["udp"]
        return pred(st)
    wait_until(ok, timeout, what)
    return st


def roundtrip(addr, payload, family=socket.AF_INET, timeout=2.0, bind=None):
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        if bind:
            s.bind(bind)
        s.settimeout(timeout)
        s.sendto(payload, addr)
        data, peer = s.recvfrom(70000)
        return data, peer


def burst(addr, n, payload=b"x" * 32, family=socket.AF_INET, wait=0.5, bind=None):
    """Send n datagrams at once from one socket; return the replies received within `wait` of the last."""
    replies = []
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        if bind:
            s.bind(bind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for i in range(n):
            s.sendto(payload + b"%06d" % i, addr)
        s.settimeout(wait)
        try:
            while True:
                replies.append(s.recvfrom(70000)[0])
        except socket.timeout:
            pass
    return replies


# --- serving ----------------------------------------------------------------------------------------


def test_udp_is_opt_in(echod_factory):
    """The shipped configuration and a config without listen_udp serve no UDP: no socket, no worker,
    no second spawner."""
    with open(os.path.join(os.path.dirname(__file__), "../../conf/echod.conf")) as f:
        shipped = f.read()
    assert re.search(r"^listen_udp = \{\}", shipped, re.M), "the shipped config must show listen_udp empty"
    e = echod_factory(udp_config(""))
    assert status(e)["udp"]["listeners"] == []
    assert "listening on UDP" not in e.log()
    assert worker_pids(e) == []
    titles = [open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")[0] for p in master_kids(e)]
    assert titles.count(b"echod: spawner") == 1


def test_python_and_socat_get_their_datagram_back(echod_factory):
    e = echod_factory(udp_config('"127.0.0.1:0", "[::1]:0"'))
    a4, a6 = udp_endpoint(e), udp_endpoint(e, socket.AF_INET6)
    for addr, fam in ((a4, socket.AF_INET), (a6, socket.AF_INET6)):
        payload = os.urandom(1000)
        data, peer = roundtrip(addr, payload, fam)
        assert data == payload
        assert (peer[0], peer[1]) == addr  # from the very address and port asked
    # empty datagrams are datagrams too
    assert roundtrip(a4, b"")[0] == b""
    # socat, as an admin would check it
    need("socat", "/usr/bin/socat")
    out = subprocess.run(["socat", "-T", "2", "-", f"UDP:{a4[0]}:{a4[1]}"], input=b"hello from socat\n",
                         capture_output=True, timeout=10)
    assert out.stdout == b"hello from socat\n", out
    st = wait_udp_counts(e, lambda u: u["answered"] >= 4)
    assert st["received"] == st["answered"] == 4
    assert st["bytes_in"] == st["bytes_out"] == 2000 + len(b"hello from socat\n")
    assert [l["socket"] for l in st["listeners"]] == ["bound", "bound"]
    assert all(l["worker_pid"] > 0 and l["policy_current"] for l in st["listeners"])


def test_replies_come_from_the_address_asked(echod_factory):
    """A wildcard socket on a host with several addresses (127.0.0.0/8 on lo): each answer comes from
    the address its datagram was sent to (IP_PKTINFO), not from the one routing would pick."""
    port = free_port()
    e = echod_factory(udp_config(f'"0.0.0.0:{port}"'))
    for host in ("127.0.0.1", "127.0.0.2", "127.1.2.3"):
        data, peer = roundtrip((host, port), b"which address?")
        assert data == b"which address?"
        assert peer == (host, port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.connect(("127.0.0.3", port))  # a connected socket accepts only the address it asked
        s.settimeout(2)
        s.send(b"connected")
        assert s.recv(100) == b"connected"


def test_a_burst_of_mixed_sizes_comes_back_datagram_for_datagram(echod_factory):
    """Answers to one peer leave as GSO groups (one size, a shorter last): whatever the mix of
    sizes in a burst, each answer is exactly its datagram, none merged, split or reordered."""
    e = echod_factory(udp_config(udp_rate=1000, udp_burst=1000, udp_byte_rate=0, udp_byte_burst=0))
    a = udp_endpoint(e)
    sizes = [100] * 5 + [50] + [100] * 3 + [200, 200, 1, 0, 1472] + [64] * 70 + [1472] * 44 + [7]
    sent = [os.urandom(n) for n in sizes]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        s.connect(a)
        for p in sent:
            s.send(p)
        s.settimeout(3)
        got = [s.recv(70000) for _ in sent]
    assert [len(g) for g in got] == sizes
    assert got == sent


def test_one_sandboxed_worker_per_socket(echod_factory):
    e = echod_factory(udp_config('"127.0.0.1:0", "[::1]:0"'))
    wait_until(lambda: len(worker_pids(e)) == 2, 10, "two UDP workers")
    for pid in worker_pids(e):
        with open(f"/proc/{pid}/status") as f:
            st = f.read()
        if not sanitized():
            assert re.search(r"^Seccomp:\s+2$", st, re.M), st
            assert re.search(r"^NoNewPrivs:\s+1$", st, re.M), st
        assert re.search(r"^CapEff:\s+0+$", st, re.M), st
        fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
        assert fds == [0, 1, 2, 3, 4], fds  # stdio, its control channel, its socket
        kinds = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds}
        assert kinds[0] == "/dev/null"
        assert kinds[3].startswith("socket:") and kinds[4].startswith("socket:")
    # many datagrams, still one process per socket
    a = udp_endpoint(e)
    burst(a, 50, wait=0.2)
    assert len(worker_pids(e)) == 2


@pytest.mark.skipif(not syscall_inject.supported(), reason="ptrace injection is x86_64 only")
def test_a_forbidden_call_kills_only_the_worker(echod_factory):
    """The worker's allow-list has no socket(): injected, it dies by SIGSYS, is logged, replaced, and
    the port answers again; the master and the TCP side never notice."""
    e = echod_factory(udp_config())
    a = udp_endpoint(e)
    wait_until(lambda: len(worker_pids(e)) == 1, 10, "a UDP worker")
    pid = wait_workers(e)[0]
    syscall_inject.inject_syscall(pid, syscall_inject.SYS_socket, socket.AF_INET, socket.SOCK_DGRAM, 0)
    e.wait_log(rf"UDP worker for 127\.0\.0\.1:{a[1]} \(pid {pid}\) was killed by SIGSYS; starting another")
    wait_until(lambda: worker_pids(e) and worker_pids(e)[0] != pid, 5, "a new worker")
    assert roundtrip(a, b"back")[0] == b"back"
    with socket.create_connection(e.endpoint(), timeout=5) as s:
        s.sendall(b"tcp")
        assert s.recv(3) == b"tcp"
    assert status(e)["udp"]["listeners"][0]["restarts"] == 1


# --- never a reflector --------------------------------------------------------------------------------


def test_per_source_rate_is_exact(echod_factory):
    e = echod_factory(udp_config(udp_rate=10, udp_burst=20))
    a = udp_endpoint(e)
    replies = burst(a, 100)
    assert len(replies) == 20
    st = wait_udp_counts(e, lambda u: u["received"] == 100)
    assert st["answered"] == 20
    assert st["not_answered"]["source-rate"] == 80
    # another source address is another group, with its own burst
    assert len(burst(a, 30, bind=("127.0.0.2", 0))) == 20


def test_bytes_per_source(echod_factory):
    e = echod_factory(udp_config(udp_rate=1000, udp_burst=1000, udp_byte_rate=4000, udp_byte_burst=4000))
    replies = burst(udp_endpoint(e), 20, payload=b"y" * 994)  # 1000 bytes each
    assert len(replies) == 4
    st = wait_udp_counts(e, lambda u: u["received"] == 20)
    assert st["not_answered"]["source-rate"] == 16


def test_service_budget_caps_every_source_together(echod_factory):
    """40 datagrams/s for the whole service: 120 sources (three addresses, 40 ports each) sending at
    once get 40 answers in all."""
    e = echod_factory(udp_config(udp_rate=100, udp_burst=100, udp_budget=40))
    a = udp_endpoint(e)
    socks = []
    for ip in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
        for _ in range(40):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((ip, 0))
            socks.append(s)
    for s in socks:
        s.sendto(b"budget", a)
    st = wait_udp_counts(e, lambda u: u["received"] == 120)
    assert st["answered"] == 40
    assert st["not_answered"]["budget"] == 80
    got = 0
    for s in socks:
        s.settimeout(0.01)
        try:
            s.recv(100)
            got += 1
        except socket.timeout:
            pass
        s.close()
    assert got == 40


def test_reflector_ports_are_never_answered(echod_factory):
    """From echo (7) or chargen (19) — another service that answers anything — no answer: two such
    services would echo each other forever. The list is configurable."""
    e = echod_factory(udp_config(f'"127.0.0.1:{free_port()}"'))
    a = udp_endpoint(e)
    for port in (7, 19, 123):
        with pytest.raises(socket.timeout):
            roundtrip(a, b"loop?", bind=("127.0.0.1", port), timeout=0.5)
    st = wait_udp_counts(e, lambda u: u["received"] == 3)
    assert st["not_answered"]["reflector-port"] == 3 and st["answered"] == 0
    e.write_config(udp_config(listen_udp=f'"127.0.0.1:{a[1]}"', udp_deny_ports="{19}"))
    e.reload()
    assert roundtrip(a, b"7 is fine now", bind=("127.0.0.1", 7))[0] == b"7 is fine now"
    with pytest.raises(socket.timeout):
        roundtrip(a, b"19 is not", bind=("127.0.0.1", 19), timeout=0.5)


def raw_udp(src, sport, dst, dport, payload):
    """An IPv4 UDP datagram with any source (port 0 included), sent on a raw socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as r:
        r.sendto(udp_tools.udp4_packet(src, sport, dst, dport, payload), (dst, 0))


def test_source_port_zero_and_broadcast_sources(echod_factory):
    e = echod_factory(udp_config())
    a = udp_endpoint(e)
    raw_udp("127.0.0.1", 0, a[0], a[1], b"from port zero")
    raw_udp("127.0.0.1", 4000, a[0], a[1], b"a control, answered")
    st = wait_udp_counts(e, lambda u: u["received"] == 2)
    assert st["not_answered"]["bad-source"] == 1 and st["answered"] == 1


def test_acl_and_size(echod_factory):
    e = echod_factory(udp_config(deny='{"127.0.0.2"}', udp_max_size=100))
    a = udp_endpoint(e)
    assert roundtrip(a, b"z" * 100)[0] == b"z" * 100
    with pytest.raises(socket.timeout):
        roundtrip(a, b"z" * 101, timeout=0.5)
    with pytest.raises(socket.timeout):
        roundtrip(a, b"denied", bind=("127.0.0.2", 0), timeout=0.5)
    st = wait_udp_counts(e, lambda u: u["received"] == 3)
    assert st["not_answered"]["too-large"] == 1 and st["not_answered"]["acl"] == 1


def test_drops_are_summarised_not_logged_each(echod_factory):
    """10,000 datagrams over the rate: one summary line in 10 s, never a line per datagram; the same
    counts in every status form."""
    e = echod_factory(udp_config(udp_rate=10, udp_burst=10))
    a = udp_endpoint(e)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(10000):
            s.sendto(b"flood", a)
            if i % 100 == 99:
                time.sleep(0.01)  # pacing, so the socket's queue does not overflow
    st = wait_udp_counts(e, lambda u: u["received"] == 10000, what="all 10,000 counted")
    assert st["answered"] + st["not_answered"]["source-rate"] == 10000
    assert st["answered"] < 40
    line = e.wait_log(r"^.*UDP: (\d+) datagrams not answered in the last 10 s \(source-rate (\d+)\); (\d+) answered$",
                      timeout=15)
    assert len(re.findall(r"UDP: ", e.log())) == 1
    prom = status(e, "prometheus")
    assert f'echod_udp_datagrams_not_answered_total{{reason="source-rate"}} {st["not_answered"]["source-rate"]}' in prom
    assert f"echod_udp_datagrams_received_total 10000" in prom
    assert "echod_udp_listeners 1" in prom
    text = status(e, "text")
    assert re.search(r"^udp +received 10000 +answered %d" % st["answered"], text, re.M), text
    assert "UDP %d answered, %d not (on 127.0.0.1:%d);" % (st["answered"], 10000 - st["answered"], a[1]) in \
        e.current_status() or e.wait_status(lambda s: "UDP %d answered" % st["answered"] in s)


# --- reload, crash, stop, activation -------------------------------------------------------------------


class Sender(threading.Thread):
    """Sends numbered datagrams every `interval` and records which came back."""

    def __init__(self, addr, interval=0.005):
        super().__init__(daemon=True)
        self.addr, self.interval = addr, interval
        self.sent, self.got = 0, set()
        self.stop = threading.Event()
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.settimeout(0.001)

    def run(self):
        while not self.stop.is_set():
            self.s.sendto(b"%08d" % self.sent, self.addr)
            self.sent += 1
            deadline = time.monotonic() + self.interval
            while time.monotonic() < deadline:
                try:
                    self.got.add(int(self.s.recv(100)))
                except (socket.timeout, ValueError):
                    pass
        end = time.monotonic() + 1.0
        while time.monotonic() < end and len(self.got) < self.sent:
            try:
                self.got.add(int(self.s.recv(100)))
            except (socket.timeout, ValueError):
                pass
        self.s.close()


def test_reload_applies_new_limits_without_a_gap(echod_factory):
    """Datagrams keep coming at 200/s through three reloads that change the limits: every one is
    answered (the socket never closes, the worker takes the new policy between two batches); the
    new burst is in force after each."""
    e = echod_factory(udp_config(f'"127.0.0.1:{free_port()}"', udp_rate=1000, udp_burst=1000))
    a = udp_endpoint(e)
    pid = wait_workers(e)[0]
    sender = Sender(a)
    sender.start()
    for rate, burst_size in ((1000, 900), (1000, 800), (10, 300)):
        time.sleep(0.3)
        e.write_config(udp_config(listen_udp=f'"127.0.0.1:{a[1]}"', udp_rate=rate, udp_burst=burst_size,
                                  udp_budget=0))
        e.reload()
        wait_until(lambda: status(e)["udp"]["listeners"][0]["policy_current"], 5, "the worker took the policy")
    time.sleep(0.3)
    sender.stop.set()
    sender.join()
    assert sender.sent > 150
    assert len(sender.got) == sender.sent, f"{sender.sent - len(sender.got)} of {sender.sent} unanswered"
    assert worker_pids(e) == [pid]  # the same worker: no restart
    # the last policy: a burst of 300 at 10/s (another source, so a full bucket)
    assert 300 <= len(burst(a, 400, bind=("127.0.0.5", 0))) <= 301


def test_reload_adds_and_removes_udp_sockets(echod_factory):
    p1, p2 = free_port(), free_port()
    e = echod_factory(udp_config(f'"127.0.0.1:{p1}"'))
    assert roundtrip(("127.0.0.1", p1), b"one")[0] == b"one"
    e.write_config(udp_config(f'"127.0.0.1:{p1}", "127.0.0.1:{p2}"'))
    e.reload()
    e.wait_log(rf"listening on UDP 127\.0\.0\.1:{p2}")
    assert roundtrip(("127.0.0.1", p2), b"two")[0] == b"two"
    wait_until(lambda: len(worker_pids(e)) == 2, 5, "two workers")
    e.write_config(udp_config(f'"127.0.0.1:{p2}"'))
    e.reload()
    e.wait_log(rf"no longer listening on UDP 127\.0\.0\.1:{p1}")
    wait_until(lambda: len(worker_pids(e)) == 1, 5, "the removed socket's worker gone")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", p1))
        s.settimeout(1)
        s.send(b"anyone?")
        with pytest.raises(ConnectionRefusedError):  # ICMP port unreachable: the port is closed
            s.recv(100)
    assert roundtrip(("127.0.0.1", p2), b"still")[0] == b"still"


def test_failed_reload_keeps_udp_wholly(echod_factory):
    """A reload whose new UDP address cannot be bound changes nothing: the old sockets, workers and
    limits stay."""
    e = echod_factory(udp_config(f'"127.0.0.1:{free_port()}"', udp_rate=10, udp_burst=5))
    a = udp_endpoint(e)
    pid = wait_workers(e)[0]
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    e.write_config(udp_config(f'"127.0.0.1:{a[1]}", "127.0.0.1:{taken.getsockname()[1]}"', udp_rate=10,
                              udp_burst=500))
    e.reload()
    e.wait_log(r"Failed to reload, keeping the old configuration: cannot listen on UDP 127\.0\.0\.1:%d" %
               taken.getsockname()[1])
    taken.close()
    assert worker_pids(e) == [pid]
    assert len(burst(a, 50)) == 5  # the old burst
    assert status(e)["config"]["reload_failures"] == 1


def test_reload_that_changes_the_sandbox_replaces_the_worker(echod_factory):
    """sandbox = false (for strace or gdb) reaches the UDP worker too: a reload starts a new UDP
    spawner in the new sandbox and a new worker from it, with the socket open throughout."""
    port = free_port()
    e = echod_factory(udp_config(f'"127.0.0.1:{port}"'))
    old = wait_workers(e)[0]
    e.write_config(udp_config(f'"127.0.0.1:{port}"', sandbox="false"))
    e.reload()
    wait_until(lambda: worker_pids(e) and worker_pids(e)[0] != old, 5, "a worker in the new sandbox")
    pid = worker_pids(e)[0]
    with open(f"/proc/{pid}/status") as f:
        assert re.search(r"^Seccomp:\s+0$", f.read(), re.M)
    assert roundtrip(("127.0.0.1", port), b"unsandboxed")[0] == b"unsandboxed"
    e.wait_log(r"started a new echod-spawner \(pid \d+, sandbox off\)")


def test_killed_worker_is_replaced_and_nothing_queued_is_lost(echod_factory):
    """SIGKILL the worker: the master keeps the socket open, so datagrams sent before its
    replacement runs wait in the socket's queue and are answered by the new worker."""
    e = echod_factory(udp_config(udp_rate=1000, udp_burst=1000))
    a = udp_endpoint(e)
    pid = wait_workers(e)[0]
    os.kill(pid, signal.SIGKILL)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(20):
            s.sendto(b"queued %d" % i, a)
        s.settimeout(5)
        got = sorted(s.recv(100) for _ in range(20))
    assert got == sorted(b"queued %d" % i for i in range(20))
    e.wait_log(rf"UDP worker for 127\.0\.0\.1:{a[1]} \(pid {pid}\) was killed by SIGKILL; starting another")
    assert worker_pids(e) != [pid] and len(worker_pids(e)) == 1


def test_stopped_worker_is_replaced(echod_factory):
    """A worker that stops answering (SIGSTOP: stuck) misses its heartbeats and is killed and
    replaced within about 5 s; what waited in the socket's queue is answered by the new one."""
    e = echod_factory(udp_config(udp_rate=1000, udp_burst=1000))
    a = udp_endpoint(e)
    pid = wait_workers(e)[0]
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"anyone there?", a)
        s.settimeout(10)
        assert s.recv(100) == b"anyone there?"
    waited = time.monotonic() - t0
    assert 4.0 <= waited <= 8.0, waited
    e.wait_log(rf"UDP worker for 127\.0\.0\.1:{a[1]} \(pid {pid}\) reported nothing for 5 s: killing it")
    e.wait_log(rf"UDP worker for 127\.0\.0\.1:{a[1]} \(pid {pid}\) was killed by SIGKILL; starting another")
    assert worker_pids(e) != [pid]


def test_worker_crash_loop_is_held_off(echod_factory):
    """A worker that dies at once is started again at most once a second, not in a tight loop."""
    e = echod_factory(udp_config())
    a = udp_endpoint(e)
    t0 = time.monotonic()
    killed = set()
    while time.monotonic() - t0 < 3.0:
        for pid in worker_pids(e):
            if pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.01)
    assert 2 <= len(killed) <= 5, killed
    wait_until(lambda: len(worker_pids(e)) == 1, 3, "a worker again")
    assert roundtrip(a, b"alive", timeout=3)[0] == b"alive"


def test_sigterm_stops_the_workers_cleanly(echod_factory):
    e = echod_factory(udp_config('"127.0.0.1:0", "[::1]:0"'))
    wait_until(lambda: len(worker_pids(e)) == 2, 5, "two workers")
    pids = worker_pids(e)
    t0 = time.monotonic()
    assert e.stop() == 0
    assert time.monotonic() - t0 < 3
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or proc_comm(pid) is None or \
            open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_socket_activation_adopts_a_datagram_socket(echod_factory):
    """systemd's ListenDatagram=: a UDP socket passed in LISTEN_FDS is served; listen_udp is
    ignored, and a reload keeps the passed socket."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    e = echod_factory(udp_config('"127.0.0.1:1"'), start=False)
    e.start(listen_sock=s)
    s.close()
    assert udp_endpoints(e) == [("127.0.0.1", port)]
    assert "socket-activated" in e.log()
    assert roundtrip(("127.0.0.1", port), b"activated")[0] == b"activated"
    assert status(e)["udp"]["listeners"][0]["socket"] == "activated"
    e.reload()
    assert roundtrip(("127.0.0.1", port), b"after reload")[0] == b"after reload"


def test_bad_udp_config_names_file_line_and_key(tmpdir_path):
    for text, err in (('listen_udp = {"127.0.0.1:7 proxy"}\n', r":2: listen_udp: '127\.0\.0\.1:7 proxy' is not"),
                      ("udp_deny_ports = {7, 70000}\n", r":2: udp_deny_ports: 70000 is not a port"),
                      ("udp_max_size = 40000\n", r":2: udp_byte_burst \(32768\) is below udp_max_size \(40000\)"),
                      ("udp_rate = 0\nudp_burst = 5\n", r":3: udp_burst is set but udp_rate is 0"),
                      ('listen_udp = {"*:7", "0.0.0.0:7"}\n', r":2: listen_udp: '0\.0\.0\.0:7' duplicates '\*:7'")):
        path = os.path.join(tmpdir_path, "bad.conf")
        with open(path, "w") as f:
            f.write('listen = {"127.0.0.1:7"}\n' + text)
        out = subprocess.run([ECHOD, "-t", "-f", path], capture_output=True, text=True)
        assert out.returncode == 6, out
        assert re.search(re.escape(path) + err, out.stderr), out.stderr


# --- echoc --udp, the operator's client, against echod ---------------------------------------------


def echoc_json(*args, timeout=60):
    out = subprocess.run([ECHOC, "--udp", "-J", *args], capture_output=True, text=True, timeout=timeout)
    return out.returncode, json.loads(out.stdout)


def test_echoc_ping_verifies_echod(echod_factory):
    e = echod_factory(udp_config('"127.0.0.1:0", "[::1]:0"'))
    for family, flag in ((socket.AF_INET, "-4"), (socket.AF_INET6, "-6")):
        host, port = udp_endpoint(e, family)
        rc, r = echoc_json(flag, "-c", "10", "-i", "0.02", "-s", "200", host, str(port))
        assert rc == 0, r
        end = r["end"]
        assert (end["sent"], end["received"], end["lost"], end["corrupted"], end["duplicates"]) == (10, 10, 0, 0, 0)
    st = wait_udp_counts(e, lambda u: u["answered"] == 20)
    assert st["bytes_out"] == 20 * 200


def test_echoc_load_counts_what_the_rate_limit_drops(echod_factory):
    """echoc's loss and echod's source-rate drops are the same datagrams, counted on both sides."""
    e = echod_factory(udp_config(udp_rate=20, udp_burst=20))
    host, port = udp_endpoint(e)
    rc, r = echoc_json("--load", "--duration", "1", "--rate", "100", "-W", "0.5", host, str(port))
    assert rc == 1, r  # loss
    end = r["end"]
    st = wait_udp_counts(e, lambda u: u["received"] == end["sent"])
    assert end["received"] == st["answered"]
    assert end["lost"] == st["not_answered"]["source-rate"]
    assert 20 <= end["received"] <= 20 + 20 * 1.5 + 1
    assert end["corrupted"] == 0


def test_echoc_load_at_full_speed_loses_nothing(echod_factory):
    """With limits that do not bind (every check still made), a windowed load gets every datagram
    back intact."""
    e = echod_factory(udp_config(udp_rate=1e6, udp_burst=1000000, udp_byte_rate=0, udp_byte_burst=0,
                                 udp_budget=0, udp_byte_budget=0))
    host, port = udp_endpoint(e)
    rc, r = echoc_json("--load", "--duration", "2", "--window", "32", host, str(port))
    end = r["end"]
    assert rc == 0, r
    assert end["lost"] == 0 and end["corrupted"] == 0 and end["received"] == end["sent"] > 1000
    st = wait_udp_counts(e, lambda u: u["answered"] == end["received"])
    assert st["received"] == end["sent"]
