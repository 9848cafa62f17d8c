"""echod-spawner, the small static process that forks the connection processes: its own sandbox,
what it costs a child, and what happens when it dies (connections go on, records are kept, a new
spawner serves new connections, a drain still reaches every child)."""
import re
import os
import shutil
import signal
import subprocess
import tempfile

import pytest

from conftest import ECHOD, base_config, connect, need, ping, proc_status, status_json, wait_until


def maps(pid):
    with open(f"/proc/{pid}/maps") as f:
        return f.read().splitlines()


def test_spawner_is_sandboxed_once_and_children_inherit(echod_factory):
    e = echod_factory()
    s = connect(e.endpoint())
    assert ping(s)
    spawner = e.spawner()
    assert spawner is not None
    with open(f"/proc/{spawner}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[0] == b"echod: spawner"
    (child,) = e.children()
    for pid in (spawner, child):
        st = proc_status(pid)
        assert st["Seccomp"] == "2" and st["NoNewPrivs"] == "1", (pid, st["Seccomp"])
        # one filter, loaded by the spawner and inherited: no child compiles its own
        assert st["Seccomp_filters"] == "1", (pid, st["Seccomp_filters"])
        for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
            assert int(st[cap], 16) == 0, (pid, cap, st[cap])
    # the child is a copy of the spawner, not of the master: none of the master's libraries
    master_libs = {ln.split()[-1] for ln in maps(e.proc.pid) if ".so" in ln}
    child_files = {ln.split()[-1] for ln in maps(child) if len(ln.split()) >= 6}
    assert any("libsystemd" in lib for lib in master_libs)
    assert not any("libsystemd" in f or "libconfuse" in f for f in child_files), child_files
    s.close()


def test_spawner_death_keeps_connections_and_a_new_one_serves(echod_factory):
    e = echod_factory()
    held = [connect(e.endpoint()) for _ in range(3)]
    for s in held:
        assert ping(s)
    old = e.spawner()
    kids = sorted(e.children())
    assert len(kids) == 3

    os.kill(old, signal.SIGKILL)
    e.wait_log(rf"echod-spawner \(pid {old}\) was killed by SIGKILL; its 3 connections continue")
    e.wait_log(r"started a new echod-spawner \(pid \d+, sandbox on\)")
    new = wait_until(lambda: e.spawner() not in (None, old) and e.spawner(), 5, "a new spawner")
    assert new != old
    # the orphans are the master's now (subreaper), and still echo every byte
    # (the dead spawner's spare, orphaned too, ends at once: its channel's other end is gone)
    wait_until(lambda: sorted(e._kids(e.proc.pid)) == sorted(kids + [new]), 5, "only the orphans and the new spawner")
    for s in held:
        assert ping(s, os.urandom(50000))
    # new connections go through the new spawner
    fresh = connect(e.endpoint())
    assert ping(fresh)
    assert len([k for k in e._kids(new) if k not in e.spares()]) == 1
    # an adopted child's end is recorded like any other, with its byte counts
    held[0].shutdown(1)
    assert held[0].recv(1) == b""
    held[0].close()
    e.wait_log(rf"closed: clean, 50004 bytes in, 50004 bytes out, [\d.]+ s, pid {kids[0]}|"
               rf"closed: clean, 50004 bytes in, 50004 bytes out, [\d.]+ s, pid {kids[1]}|"
               rf"closed: clean, 50004 bytes in, 50004 bytes out, [\d.]+ s, pid {kids[2]}")
    # a drain reaches the adopted children too (the master signals them itself)
    fresh.close()
    rest = held[1:]
    e.proc.send_signal(signal.SIGTERM)
    for s in rest:
        assert s.recv(1) == b""  # FIN after the drain, no RST
        s.close()
    assert e.proc.wait(timeout=15) == 0
    assert e.log().count("closed: drained") == 2


def test_spawner_exits_when_master_is_gone(echod_factory):
    e = echod_factory()
    spawner = e.spawner()
    e.check_exit = False
    e.proc.send_signal(signal.SIGKILL)
    e.proc.wait(timeout=10)

    def gone():
        try:
            with open(f"/proc/{spawner}/stat") as f:
                return f.read().split(")")[1].split()[0] == "Z"  # exited, not reaped by us
        except FileNotFoundError:
            return True
    wait_until(gone, 5, "the spawner to exit at the end of its socket")


def test_stuck_spawner_does_not_hang_the_stop(echod_factory):
    """A spawner that does not exit when its socket closes (here: stopped) is killed at stop,
    a bounded wait later, and the master still exits 0."""
    e = echod_factory()
    spawner = e.spawner()
    os.kill(spawner, signal.SIGSTOP)
    assert e.stop(timeout=15) == 0, e.log()[-2000:]
    assert not os.path.exists(f"/proc/{spawner}")  # killed and reaped by the master


def test_sandbox_change_at_reload_hands_over_to_a_new_spawner(echod_factory):
    """A filter cannot be unloaded: a reload that turns the sandbox off retires the spawner and
    starts a new one outside it. Running connections keep the sandbox they started in, go on
    echoing, and are recorded; new ones get the new setting; and back on again."""
    e = echod_factory()
    held = connect(e.endpoint())
    assert ping(held)
    (old_child,) = e.children()
    old_spawner = e.spawner()
    e.write_config(base_config(sandbox="false"))
    e.reload()
    e.wait_log(rf"echod-spawner \(pid {old_spawner}\) retired; its 1 connections continue")
    e.wait_log(r"started a new echod-spawner \(pid \d+, sandbox off\)")
    wait_until(lambda: e.spawner() not in (None, old_spawner), 5, "the new spawner")
    assert proc_status(e.spawner())["Seccomp"] == "0"
    fresh = connect(e.endpoint())
    assert ping(fresh)
    new_child = max(set(e.children()) - {old_child})
    assert proc_status(new_child)["Seccomp"] == "0"
    assert proc_status(old_child)["Seccomp"] == "2"  # unchanged: it started sandboxed
    assert ping(held, os.urandom(50000))
    held.shutdown(1)
    assert held.recv(1) == b""
    held.close()
    e.wait_log(rf"closed: clean, 50004 bytes in, 50004 bytes out, [\d.]+ s, pid {old_child}")
    # and on again
    off_spawner = e.spawner()
    e.write_config(base_config(sandbox="true"))
    e.reload()
    e.wait_log(r"started a new echod-spawner \(pid \d+, sandbox on\)")
    # the one it replaces finishes what it was handed, then exits; its children go on
    e.wait_log(rf"echod-spawner \(pid {off_spawner}\) retired")
    with connect(e.endpoint()) as s:
        assert ping(s)
        assert proc_status(max(set(e.children()) - {new_child}))["Seccomp"] == "2"
    assert ping(fresh)
    fresh.close()


def test_missing_spawner_is_a_clear_startup_error(tmp_path):
    # a copy of echod without echod-spawner next to it, and none installed
    lonely = tmp_path / "echod"
    lonely.write_bytes(open(ECHOD, "rb").read())
    lonely.chmod(0o755)
    conf = tmp_path / "echod.conf"
    conf.write_text('listen = { "127.0.0.1:0" }\nuser = "nobody"\ncontrol_socket = ""\n')
    if os.path.exists("/usr/libexec/echod/echod-spawner"):
        pytest.skip("an installed echod-spawner would be used, rightly")
    p = subprocess.run([str(lonely), "-D", "-e", "-f", str(conf)], capture_output=True, text=True, timeout=20)
    assert p.returncode == 1
    assert re.search(r"Failed to start echod-spawner \(\S+\): No such file or directory", p.stderr)


def test_build_tree_the_user_cannot_reach(echod_factory):
    """echod started as root runs as nobody: the spawner beside it is opened before the switch and
    executed through that fd, so a build tree in a 0700 home (Debian 12 makes them so) works.
    Without it: "Failed to start echod-spawner (...): Permission denied"."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to nobody")
    private = tempfile.mkdtemp(prefix="echod-private-")  # 0700, root's
    try:
        for name in ("echod", "echod-spawner"):
            shutil.copy2(os.path.join(os.path.dirname(ECHOD), name), os.path.join(private, name))
        e = echod_factory(start=False)
        e.binary = os.path.join(private, "echod")
        e.start()
        assert proc_status(e.proc.pid)["Uid"].split()[0] != "0"
        with connect(e.endpoint()) as s:
            assert ping(s, b"from a tree nobody can search")
        wait_until(lambda: e.spawner(), 10, "the spawner")
        assert os.readlink(f"/proc/{e.spawner()}/exe") == os.path.join(private, "echod-spawner")
    finally:
        shutil.rmtree(private, ignore_errors=True)


def traced_wait_calls(strace, pid, out, action):
    """The wait4/waitid calls pid makes while action() runs (strace attached, then detached)."""
    tr = subprocess.Popen([strace, "-qq", "-e", "trace=wait4,waitid", "-o", out, "-p", str(pid)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: proc_status(pid)["TracerPid"] != "0", 10, "strace to attach")
        action()
    finally:
        tr.send_signal(signal.SIGINT)
        tr.wait(10)
    with open(out) as f:
        return [ln for ln in f.read().splitlines() if ln.startswith(("wait4", "waitid"))]


def test_no_scan_of_every_child_per_connection(echod_factory, tmp_path):
    """waitpid(-1) walks every child the spawner has (with 17,000 held connections ~1.9 ms a call
    here): it used to make one after every fork, which held the connection rate at a few hundred
    per second with many connections held. Now, while none of its children exits, the spawner
    forks without a single wait call; when some do, each is reaped and recorded."""
    strace = need("strace", "/usr/bin/strace")
    e = echod_factory(max_connections=1000, max_per_source=0, control_socket=f'"{tmp_path}/control"')
    held = []
    for _ in range(300):
        held.append(connect(e.endpoint()))
        assert ping(held[-1])
    spawner = e.spawner()

    def open_more():
        for _ in range(100):
            held.append(connect(e.endpoint()))
            assert ping(held[-1])
    calls = traced_wait_calls(strace, spawner, str(tmp_path / "open.trace"), open_more)
    assert calls == [], calls[:10]
    assert status_json(e)["totals"]["active"] == 400

    # 50 end at once, their SIGCHLDs coalescing: every one is reaped and recorded
    victims = [p for p in e.children() if p not in e.spares()][:50]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    for pid in victims:
        e.wait_log(rf"closed: killed-by-SIGKILL, \d+ bytes in, \d+ bytes out, [\d.]+ s, pid {pid}$")
    wait_until(lambda: status_json(e)["totals"]["active"] == 350, 10, "350 active")
    gone = [s for s in held if not ping_or_end(s)]
    assert len(gone) == 50, len(gone)
    for s in held:
        s.close()
    wait_until(lambda: status_json(e)["totals"]["active"] == 0, 20, "no connection left")


def ping_or_end(s):
    """True if s still echoes; False if the server ended it."""
    try:
        s.settimeout(10)
        s.sendall(b"x")
        return s.recv(1) == b"x"
    except (ConnectionResetError, BrokenPipeError):
        return False
