"""The master's core under the faults that used to break its promises: limits that hold while
children linger, slots freed once when a spawner is retired or dies, reloads that apply whole or
not at all. Each test failed on the code before the core was reshaped (4a6b3b7)."""
import os
import signal
import socket
import tempfile

from conftest import Echod, base_config, closed_by_server, connect, connect_from, ping, prlimit, proc_title, refused, status_json, wait_until


def title(pid):
    return (proc_title(pid) or b"").decode(errors="replace")


kids = Echod._kids


def spawners(e):
    return [p for p in kids(e.proc.pid) if title(p) == "echod: spawner"]


def workers(e):
    """Every live connection process: children of any spawner, and those the master adopted; not a
    spare (forked ahead, no connection yet)."""
    out = []
    for p in kids(e.proc.pid):
        if title(p) == "echod: spawner":
            out += kids(p)
        else:
            out.append(p)
    return [p for p in out if title(p).startswith("echod: ") and title(p) not in ("echod: spawner", "echod: spare")]


def start(echod_factory, **keys):
    """echod with its own control socket (the suite runs many at once)."""
    d = tempfile.mkdtemp(prefix="echod-core-")
    keys.setdefault("control_socket", f'"{d}/control"')
    return echod_factory(**keys), keys


def the_spawner(e):
    """The spawner's pid, once /proc shows it."""
    wait_until(lambda: e.spawner() is not None, 10, "echod-spawner")
    return e.spawner()


def conns(st):
    return sorted(c["pid"] for c in st["connections"])


def test_children_that_sent_their_fin_still_count(echod_factory):
    """max_bytes: the child half-closes and lingers for the peer's FIN. A client that reads its echo
    and never closes holds its process, and that process counts against max_connections."""
    e, _ = start(echod_factory, max_connections=2, max_per_source=0, max_bytes=4)
    held, admitted = [], 0
    for _ in range(10):
        s = connect(e.endpoint())
        held.append(s)
        s.sendall(b"12345678")
        got = b""
        try:
            while True:
                b = s.recv(100)
                if not b:
                    break
                got += b
        except ConnectionResetError:
            pass
        admitted += got == b"1234"
        assert len(workers(e)) <= 2, workers(e)
    assert admitted == 2, admitted
    st = status_json(e)
    assert st["totals"]["active"] == 2 and len(workers(e)) == 2
    assert st["refused"]["capacity"] == 8
    for s in held:
        s.close()


def test_handoffs_of_a_retired_spawner_are_counted_once(echod_factory):
    """A reload that changes the sandbox while the spawner is stopped: the connections it cannot take
    go to the new spawner, counted once; nothing runs outside max_connections."""
    e, keys = start(echod_factory, max_connections=4, max_per_source=0, sandbox="true")
    old = the_spawner(e)
    os.kill(old, signal.SIGSTOP)
    e.write_config(base_config(**dict(keys, sandbox="false")))
    e.reload()
    first = [connect(e.endpoint()) for _ in range(3)]
    for s in first:
        assert ping(s)
    # the stopped one is killed after its grace to exit; its hand-offs were none
    wait_until(lambda: old not in spawners(e), 10, "the stopped spawner retired (killed)")
    more = [connect(e.endpoint()) for _ in range(4)]
    served = sum(not refused(s) for s in more)
    assert served == 1, served
    w = workers(e)
    st = status_json(e)
    assert len(w) == 4 and st["totals"]["active"] == 4 and conns(st) == sorted(w), (w, st["totals"])
    for s in first + more:
        s.close()
    wait_until(lambda: status_json(e)["totals"]["active"] == 0 and not workers(e), 10, "all gone")


def test_handoffs_lost_with_a_dead_spawner_are_refused_once(echod_factory):
    """Hand-offs sent to a spawner that is killed before forking them: each is refused once
    (spawner-failed: no process holds the connection), the slots come back, and the next
    spawner serves new connections."""
    e, _ = start(echod_factory, max_connections=4, max_per_source=0)
    sp = the_spawner(e)
    os.kill(sp, signal.SIGSTOP)
    lost = [connect(e.endpoint()) for _ in range(3)]
    wait_until(lambda: status_json(e)["spawner"]["in_flight"] == 3, 10, "three hand-offs in flight")
    os.kill(sp, signal.SIGKILL)
    for s in lost:
        assert refused(s)
    e.wait_log(r"refused connection from 127\.0\.0\.1:\d+: spawner-failed")
    wait_until(lambda: e.spawner() not in (None, sp), 10, "a new spawner")
    fresh = [connect(e.endpoint()) for _ in range(4)]
    for s in fresh:
        assert ping(s)
    st = status_json(e)
    assert st["totals"]["active"] == 4 and st["refused"]["spawner-failed"] == 3 and st["totals"]["accepted"] == 4
    assert conns(st) == sorted(workers(e))
    for s in lost + fresh:
        s.close()


def test_failed_reload_does_not_change_the_proxy_requirement(echod_factory):
    """A reload that cannot bind a new address changes nothing: a kept listener does not start
    requiring PROXY headers."""
    e, keys = start(echod_factory)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    e.write_config(base_config(**dict(keys, listen=f'"127.0.0.1:0", "127.0.0.1:{taken.getsockname()[1]}"',
                                      proxy_protocol="true")))
    e.reload()
    e.wait_log(r"Failed to reload, keeping the old configuration: cannot listen on 127\.0\.0\.1:\d+")
    with connect(e.endpoint()) as s:
        assert ping(s)
    assert status_json(e)["listeners"][0]["proxy"] is False
    taken.close()


def test_reload_that_fails_half_way_changes_nothing(echod_factory):
    """The new sandbox needs a new spawner, which cannot start with the master out of fds: the
    reload fails whole — the new deny list is not enforced and the old configuration stays."""
    e, keys = start(echod_factory, sandbox="true")
    with connect(e.endpoint()) as s:
        assert ping(s)
    before = status_json(e)["config"]["effective"]
    e.write_config(base_config(**dict(keys, sandbox="false", deny='{"127.0.0.0/8"}')))
    pid = e.proc.pid
    soft = prlimit(pid, "--nofile", "--raw", "--noheadings", "--output=SOFT").strip()
    # room for reading the file, not for the new spawner's socketpair
    prlimit(pid, f"--nofile={len(os.listdir(f'/proc/{pid}/fd')) + 1}:")
    try:
        e.reload()
    finally:
        prlimit(pid, f"--nofile={soft}:")
    e.wait_log(r"Failed to reload, keeping the old configuration: cannot start echod-spawner")
    assert "reloaded configuration" not in e.log()
    with connect(e.endpoint()) as s:
        assert ping(s)
    assert status_json(e)["config"]["effective"] == before


def test_regrouping_counts_connections_not_started_yet(echod_factory):
    """A reload that changes source_prefix_v4 while hand-offs wait for the spawner keeps their
    per-source counts."""
    e, conf = start(echod_factory, listen='"0.0.0.0:0"', max_connections=10, max_per_source=2)
    addr = ("127.0.0.1", e.port)
    sp = the_spawner(e)
    os.kill(sp, signal.SIGSTOP)
    try:
        pending = [connect_from(addr, "127.0.0.2") for _ in range(2)]
        wait_until(lambda: status_json(e)["spawner"]["in_flight"] == 2, 10, "two hand-offs in flight")
        e.write_config(base_config(**conf, source_prefix_v4=24))
        e.reload()
    finally:
        os.kill(sp, signal.SIGCONT)
    for s in pending:
        assert ping(s)
    third = connect_from(addr, "127.0.0.3")  # the same /24 holds 2 already
    assert refused(third)
    e.wait_log(r"per-source \(max_per_source=2 reached for 127\.0\.0\.0/24\)")
    for s in pending + [third]:
        s.close()


def test_stop_with_a_stopped_spawner_ends_within_shutdown_timeout(echod_factory):
    """A spawner that is stopped cannot pass SIGTERM or SIGKILL on: at shutdown_timeout the master
    kills it, adopts its children, kills them, and exits."""
    e, _ = start(echod_factory, shutdown_timeout=1)
    held = [connect(e.endpoint()) for _ in range(3)]
    for s in held:
        assert ping(s)
    kids_before = workers(e)
    os.kill(the_spawner(e), signal.SIGSTOP)
    e.proc.send_signal(signal.SIGTERM)
    e.proc.wait(timeout=1 + 5)  # shutdown_timeout, and a bound for the kills and reaps
    assert e.proc.returncode == 0, e.log()
    for pid in kids_before:
        assert not os.path.exists(f"/proc/{pid}") or title(pid) == "", pid
    for s in held:
        assert closed_by_server(s, timeout=5)
