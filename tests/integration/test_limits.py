"""Admission before fork: global and per-source limits, refusal logging, idle timeout,
accept back-off when the master runs out of file descriptors."""
import os
import re
import subprocess
import time


from conftest import connect, connect_from, cpu_seconds, echo_roundtrip, ping, prlimit, refused, wait_until








def test_max_connections(echod_factory):
    e = echod_factory(max_connections=3, max_per_source=0)
    held = [connect(e.endpoint()) for _ in range(3)]
    for s in held:
        assert ping(s)
    assert len(e.children()) == 3
    extra = connect(e.endpoint())
    assert refused(extra)
    extra.close()
    # a refusal costs no fork, and the admitted ones keep echoing
    assert len(e.children()) == 3
    for s in held:
        assert ping(s, os.urandom(100000))
    e.wait_log(r"refused connection from 127\.0\.0\.1:\d+: capacity \(max_connections=3 reached\)")
    e.wait_status(lambda st: "refused (capacity 1," in st)
    # ps shows the master's load, refreshed with STATUS=
    with open(f"/proc/{e.proc.pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[0].strip() == b"echod: master [3 of 3 connections]"
    # a slot freed is a slot available again
    held.pop().close()
    e.wait_log(r"closed: clean", count=1)
    again = connect(e.endpoint())
    assert ping(again)
    for s in held + [again]:
        s.close()


def test_max_per_source(echod_factory):
    e = echod_factory(listen='"0.0.0.0:0"', max_connections=10, max_per_source=2)
    addr = ("127.0.0.1", e.port)
    a = [connect_from(addr, "127.0.0.2") for _ in range(2)]
    for s in a:
        assert ping(s)
    third = connect_from(addr, "127.0.0.2")
    assert refused(third)
    # another source is not affected
    b = connect_from(addr, "127.0.0.3")
    assert ping(b)
    for s in a:
        assert ping(s)
    e.wait_log(r"refused connection from 127\.0\.0\.2:\d+: per-source \(max_per_source=2 reached for 127\.0\.0\.2/32\)")
    e.wait_status(lambda st: "per-source 1," in st and "capacity 0" in st)
    for s in a + [b, third]:
        s.close()


def test_reconnect_at_once_is_not_refused(echod_factory):
    """A client that reconnects the moment it has its echo and our FIN is not refused for the
    connection it just finished, though that child may not have been reaped yet."""
    e = echod_factory(max_connections=1, max_per_source=1)
    for i in range(300):
        with connect(e.endpoint()) as s:
            assert echo_roundtrip(s, b"%d" % i) == b"%d" % i, f"round {i} refused"
    e.wait_status(lambda st: "300 accepted, 0 refused" in st)


def test_source_prefix_groups_sources(echod_factory):
    e = echod_factory(listen='"0.0.0.0:0"', max_connections=10, max_per_source=2, source_prefix_v4=24)
    addr = ("127.0.0.1", e.port)
    a = connect_from(addr, "127.0.0.2")
    b = connect_from(addr, "127.0.0.3")
    assert ping(a) and ping(b)
    c = connect_from(addr, "127.0.0.4")  # same /24: over the limit
    assert refused(c)
    e.wait_log(r"per-source \(max_per_source=2 reached for 127\.0\.0\.0/24\)")
    for s in (a, b, c):
        s.close()


def test_refusals_are_summarised(echod_factory):
    """A flood of refusals logs one line at once and a summary per 10 s window, not a line each."""
    e = echod_factory(max_connections=1, max_per_source=0)
    held = connect(e.endpoint())
    assert ping(held)
    for _ in range(50):
        s = connect(e.endpoint())
        assert refused(s)
        s.close()
    e.wait_log(r"refused 49 more connections in 1\d s: capacity \(most from 127\.0\.0\.1/32: 49\)", timeout=15)
    assert len(re.findall(r"refused connection from", e.log())) == 1
    assert ping(held)
    held.close()


def test_idle_timeout(echod_factory):
    e = echod_factory(idle_timeout=1)
    with connect(e.endpoint()) as s:
        assert ping(s)
        t0 = time.monotonic()
        s.settimeout(5)
        assert s.recv(10) == b""  # the server closed: EOF
        took = time.monotonic() - t0
    assert 0.8 <= took <= 2.5, took
    e.wait_log(r"closed: idle-timeout, 4 bytes in, 4 bytes out")


def test_active_connection_is_not_idle(echod_factory):
    e = echod_factory(idle_timeout=1)
    with connect(e.endpoint()) as s:
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:  # traffic every 0.3 s for longer than the timeout
            assert ping(s)
            time.sleep(0.3)
    assert "idle-timeout" not in e.log()




def test_emfile_backs_off_and_recovers(echod_factory):
    """Out of fds, accept() fails with EMFILE: the master pauses instead of spinning, then
    serves the clients that waited in the backlog once fds are available again."""
    e = echod_factory()
    pid = e.proc.pid
    # fds 0-2 are always open, so with a soft limit of 3 no new fd can be had while the ones
    # already open stay valid. Only the soft limit: raising a hard one needs CAP_SYS_RESOURCE.
    prlimit(pid, "--nofile=3:")
    waiting = [connect(e.endpoint()) for _ in range(5)]  # completed by the kernel, in the backlog
    e.wait_log(r"accept\(\) failed, pausing new connections for 100 ms: Too many open files")
    cpu0 = cpu_seconds(pid)
    time.sleep(2)  # measuring CPU over a fixed interval, not waiting for a state
    assert cpu_seconds(pid) - cpu0 < 0.3, "the master spins while out of fds"
    prlimit(pid, "--nofile=1024:")
    for s in waiting:
        s.settimeout(2)
        assert echo_roundtrip(s, b"served after back-off") == b"served after back-off"
        s.close()


def test_fork_failure_refuses_and_recovers(echod_factory):
    """RLIMIT_NPROC hit: fork() fails, that connection is refused, the master carries on."""
    e = echod_factory(user='"nobody"', max_per_source=0)
    pid = e.spawner()  # echod-spawner forks the children
    held = connect(e.endpoint())
    assert ping(held)  # one child of nobody's exists now
    # and the spare, forked ahead of the next connection
    spare = wait_until(lambda: e.spares(), 5, "a spare")[0]
    # soft limit only
    soft = prlimit(pid, "--nproc", "--raw", "--noheadings", "--output=SOFT").strip()
    prlimit(pid, "--nproc=1:")
    # the spare was forked already: it serves the next connection; the one after needs a fork
    with connect(e.endpoint()) as s:
        assert ping(s)
    s = connect(e.endpoint())
    assert refused(s)
    s.close()
    assert spare not in e.spares()
    e.wait_log(r"refused connection from 127\.0\.0\.1:\d+: fork-failed: Resource temporarily unavailable")
    e.wait_status(lambda st: "fork 1, spawner 0)" in st)
    assert ping(held)
    prlimit(pid, f"--nproc={soft}:")
    with connect(e.endpoint()) as s:
        assert echo_roundtrip(s, b"forks again") == b"forks again"
    held.close()
