"""Admission control and abuse bounds against the real echod: rates, access lists, the wait
queue, and the per-connection bounds enforced in the child (stall, idle, lifetime, bytes)."""
import json
import os
import socket
import subprocess
import threading
import time

from conftest import (ECHOC, base_config, connect, connect_from, cpu_seconds, echo_roundtrip, ping, refused,
                      wait_admitted)




def test_connection_rate_triggers_and_recovers(echod_factory):
    e = echod_factory(connection_rate=5, connection_burst=5, max_per_source=0)
    outcomes = []
    for _ in range(12):
        s = connect(e.endpoint())
        outcomes.append(refused(s))
        s.close()
    assert outcomes.count(False) == 5, outcomes  # the burst
    assert outcomes[5:] == [True] * 7
    e.wait_log(r"refused connection from 127\.0\.0\.1:\d+: rate \(connection_rate=5/s exceeded\)")
    e.wait_status(lambda st: "rate 7," in st)
    # one token comes back every 200 ms: service resumes on its own, nothing was switched off
    assert wait_admitted(e.endpoint()) < 0.5


def test_per_source_rate_is_per_source(echod_factory):
    e = echod_factory(listen='"0.0.0.0:0"', per_source_rate=1, per_source_burst=2, max_per_source=0)
    addr = ("127.0.0.1", e.port)
    got = []
    for _ in range(4):
        s = connect_from(addr, "127.0.0.2")
        got.append(refused(s))
        s.close()
    assert got == [False, False, True, True]
    # another source has its own bucket
    s = connect_from(addr, "127.0.0.3")
    assert ping(s)
    s.close()
    e.wait_log(r"refused connection from 127\.0\.0\.2:\d+: per-source-rate "
               r"\(per_source_rate=1/s exceeded for 127\.0\.0\.2/32\)")
    e.wait_status(lambda st: "per-source-rate 2," in st)
    assert wait_admitted(addr, "127.0.0.2") < 1.5


def test_acl_allow_and_deny(echod_factory):
    e = echod_factory(listen='"0.0.0.0:0", "[::1]:0"', allow='{"127.0.0.0/24"}', deny='{"127.0.0.4"}')
    addr = ("127.0.0.1", e.endpoint()[1])
    verdicts = {}
    for src in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.1.1"):
        s = connect_from(addr, src)
        verdicts[src] = not refused(s)
        s.close()
    assert verdicts == {"127.0.0.2": True, "127.0.0.3": True, "127.0.0.4": False, "127.0.1.1": False}
    # a non-empty allow list covers IPv6 too
    s = connect(e.endpoint(socket.AF_INET6))
    assert refused(s)
    s.close()
    e.wait_log(r"refused connection from 127\.0\.0\.4:\d+: acl \(denied by allow/deny\)")
    e.wait_status(lambda st: "acl 3," in st)
    # refusals cost no fork
    assert e.children() == []


def test_acl_reload(echod_factory):
    e = echod_factory(listen='"0.0.0.0:0"', deny='{"127.0.0.2"}')
    addr = ("127.0.0.1", e.port)
    s = connect_from(addr, "127.0.0.2")
    assert refused(s)
    s.close()
    e.write_config(base_config(listen='"0.0.0.0:0"', deny='{"127.0.0.3"}'))
    e.reload()
    s = connect_from(addr, "127.0.0.2")
    assert ping(s)
    s.close()
    s = connect_from(addr, "127.0.0.3")
    assert refused(s)
    s.close()


def test_ipv4_mapped_peer_matches_ipv4_acl(echod_factory):
    """A dual-stack IPv6 socket sees IPv4 clients as ::ffff:a.b.c.d; the ACL treats them as IPv4.
    echod's own listeners are IPV6_V6ONLY, so the mapped case comes through a passed socket."""
    lsock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    lsock.bind(("::", 0))
    lsock.listen(16)
    port = lsock.getsockname()[1]
    e = echod_factory(start=False, deny='{"127.0.0.2"}')
    e.start(listen_sock=lsock)
    lsock.close()
    e.wait_log(r"socket-activated")
    s = connect_from(("127.0.0.1", port), "127.0.0.2")
    assert refused(s)
    s.close()
    s = connect_from(("127.0.0.1", port), "127.0.0.3")
    assert ping(s)
    s.close()
    e.wait_log(r"connection 127\.0\.0\.3:\d+ closed")  # logged as IPv4, not ::ffff:
    e.wait_log(r"refused connection from 127\.0\.0\.2:\d+: acl")


def test_queue_at_capacity(echod_factory):
    e = echod_factory(max_connections=1, max_per_source=0, at_capacity='"queue"', queue_timeout=10)
    a = connect(e.endpoint())
    assert ping(a)
    b = connect(e.endpoint())
    b.sendall(b"waiting")
    b.settimeout(0.5)
    try:
        b.recv(10)
        raise AssertionError("a queued connection was served or closed while the slot was taken")
    except socket.timeout:
        pass
    e.wait_status(lambda st: "1 queued" in st)
    a.close()  # the slot frees: b is served, with the bytes it sent while waiting
    b.settimeout(5)
    assert b.recv(10) == b"waiting"
    b.close()
    assert "refused" not in e.log()


def test_queue_timeout_refuses_instead_of_hanging(echod_factory):
    e = echod_factory(max_connections=1, max_per_source=0, at_capacity='"queue"', queue_timeout=1)
    a = connect(e.endpoint())
    assert ping(a)
    b = connect(e.endpoint())
    t0 = time.monotonic()
    b.settimeout(5)
    assert b.recv(10) == b""  # refused: EOF
    waited = time.monotonic() - t0
    assert 0.8 <= waited <= 2.0, waited
    e.wait_log(r"capacity \(waited queue_timeout=1 s\)")
    assert ping(a)
    a.close()
    b.close()


def test_stall_timeout(echod_factory):
    """The client sends but never reads: once its receive and our send buffers are full, nothing
    moves; stall_timeout closes the connection, one second later (±1 s)."""
    e = echod_factory(stall_timeout=1, idle_timeout=30)
    s = connect(e.endpoint())
    s.setblocking(False)
    chunk = b"x" * 65536
    t_full = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # fill until the pipe stays full for 50 ms
        try:
            s.send(chunk)
            t_full = None
        except BlockingIOError:
            t_full = t_full or time.monotonic()
            if time.monotonic() - t_full > 0.05:
                break
            time.sleep(0.005)
    e.wait_log(r"closed: stall-timeout", timeout=5)
    took = time.monotonic() - t_full
    assert 0.3 <= took <= 2.5, took
    s.close()


def test_max_session(echod_factory):
    e = echod_factory(max_session=2, idle_timeout=30)
    s = connect(e.endpoint())
    t0 = time.monotonic()
    closed_at = None
    while time.monotonic() - t0 < 5:  # busy the whole time: it is the lifetime that ends it
        try:
            s.sendall(b"tick")
            got = s.recv(100)
        except (ConnectionResetError, BrokenPipeError):
            got = b""
        if not got:
            closed_at = time.monotonic() - t0
            s.close()  # like any client on EOF
            break
        time.sleep(0.05)
    assert closed_at is not None and 1.5 <= closed_at <= 3.0, closed_at
    e.wait_log(r"closed: max-session, \d+ bytes in, \d+ bytes out, 2\.\d{3} s")


def test_max_bytes(echod_factory):
    e = echod_factory(max_bytes=100000)
    data = os.urandom(1000000)
    with connect(e.endpoint()) as s:
        got = echo_roundtrip(s, data)  # sends it all, half-closes, reads to EOF
    assert got == data[:100000]  # exactly the cap, then a clean EOF
    # all of it was received (the rest read and dropped until the EOF), a tenth echoed
    e.wait_log(r"closed: max-bytes, 1000000 bytes in, 100000 bytes out")


def test_flood_at_ten_times_the_rate(echod_factory):
    """10 s at 10x connection_rate: admitted sessions keep echoing intact, the master stays cheap,
    and service is back within 1 s after the flood."""
    rate = 50
    e = echod_factory(connection_rate=rate, connection_burst=rate, max_per_source=0, max_connections=200)
    survivors = [connect(e.endpoint()) for _ in range(3)]
    for s in survivors:
        assert ping(s)
    cpu0 = cpu_seconds(e.proc.pid)
    flood = subprocess.Popen([ECHOC, "--load", "--connections", "16", "--rate", str(rate * 10),
                              "--duration", "10", "--json", *map(str, e.endpoint())],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()
    checked = [0]
    errors = []

    def keep_echoing():
        while not stop.is_set():
            for s in survivors:
                payload = os.urandom(4096)
                try:
                    if not ping(s, payload):
                        errors.append("mismatch")
                except Exception as ex:  # noqa: BLE001
                    errors.append(repr(ex))
                checked[0] += 1

    t = threading.Thread(target=keep_echoing)
    t.start()
    out, err = flood.communicate(timeout=30)
    stop.set()
    t.join(10)
    cpu = cpu_seconds(e.proc.pid) - cpu0
    assert errors == [] and checked[0] > 100
    report = json.loads(out)
    end = report["end"]
    print("flood report:", json.dumps(end)[:600], "master cpu:", cpu)
    # the rate held: what was admitted is the burst plus rate x duration (±10%, timing)
    status = e.current_status()
    accepted = int(status.split(" accepted")[0].rsplit(" ", 1)[1])
    assert rate * 11 * 0.9 <= accepted - 3 <= rate * 11 * 1.1, status
    assert " rate 0," not in status
    # and the master spent well under a core refusing the rest
    assert cpu < 3.0, f"master used {cpu:.2f} s of CPU in a 10 s flood"
    # service is back within 1 s
    assert wait_admitted(e.endpoint(), deadline=1.0) < 1.0
    for s in survivors:
        assert ping(s)
        s.close()
