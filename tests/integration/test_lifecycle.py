"""Lifecycle of the real echod: command line, config check and dump, daemonising, privilege drop,
process titles, drain on SIGTERM, socket activation and the watchdog.

Every wait is bounded and waits for an observable condition (READY=1, a log line, a port, a /proc
entry) — never a bare sleep.
"""
import glob
import grp
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import (ECHOD, ROOT, base_config, connect, echo_roundtrip, free_port, ping, proc_status,
                      clean_env, recv_exactly, wait_until)

GOOD_CONFIGS = [os.path.join(ROOT, "conf", "echod.conf")] + sorted(
    glob.glob(os.path.join(ROOT, "tests", "configs", "good", "*.conf")))
BAD_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "tests", "configs", "bad", "*.conf")))

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (privilege drop, /proc of other users)")


# --- helpers ----------------------------------------------------------------------------------

def run_echod(*args, timeout=15, prefix=()):
    return subprocess.run([*prefix, ECHOD, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env=clean_env(), timeout=timeout)




def proc_stat(pid):
    """Fields of /proc/PID/stat after the comm field: [state, ppid, pgrp, session, ...]."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    return data[data.rindex(")") + 2:].split()



def gone(pid):
    """The process no longer exists (or is a zombie waiting for a reaper that is not us)."""
    try:
        return proc_stat(pid)[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def ancestors(pid):
    out = []
    while pid > 1:
        pid = int(proc_stat(pid)[1])
        out.append(pid)
    return out


def refused(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


def drain_notify(e):
    """Collect the datagrams already queued on the harness notify socket (non-blocking)."""
    e.notify.sock.setblocking(False)
    try:
        while True:
            try:
                data = e.notify.sock.recv(65536)
            except BlockingIOError:
                break
            e.notify.messages.append(dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line))
    finally:
        e.notify.sock.setblocking(True)
    return e.notify.messages


def echo_once(addr, data=b"ping\n"):
    with connect(addr, timeout=5) as s:
        assert echo_roundtrip(s, data) == data


# --- 1. -t -------------------------------------------------------------------------------------

# the largest max_connections (262144) needs that many open files and a few more: -t checks that
NOFILE_LARGEST = 262144 + 1024


def check_config(path):
    """echod -t, with room for the largest max_connections where a fixture asks for it (raising a
    hard RLIMIT_NOFILE takes CAP_SYS_RESOURCE: skipped, with the reason, without it)."""
    r = run_echod("-t", "-f", path)
    if "file descriptors; this process may have" not in r.stderr:
        return r
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < NOFILE_LARGEST:
        probe = subprocess.run(["prlimit", f"--nofile={NOFILE_LARGEST}:{NOFILE_LARGEST}", "true"],
                               capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"needs RLIMIT_NOFILE {NOFILE_LARGEST}, and this process may not raise its hard limit "
                        f"({probe.stderr.strip()}): {r.stderr.strip()}")
    return run_echod("-t", "-f", path, prefix=["prlimit", f"--nofile={NOFILE_LARGEST}:{NOFILE_LARGEST}", "--"])


@pytest.mark.parametrize("path", GOOD_CONFIGS, ids=os.path.basename)
def test_check_good_config(path):
    r = check_config(path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "configuration OK\n", "")


@pytest.mark.parametrize("path", BAD_CONFIGS, ids=os.path.basename)
def test_check_bad_config_names_file_line_and_problem(path):
    with open(path) as f:
        m = re.match(r"# expect: (\d+): (.+)$", f.readline())
    assert m, f"{path}: first line must be '# expect: LINE: TEXT'"
    line, text = m.groups()
    r = run_echod("-t", "-f", path)
    assert r.returncode == 6, r
    assert "configuration OK" not in r.stdout
    assert f"{path}:{line}: " in r.stderr
    assert text in r.stderr.split(f"{path}:{line}: ", 1)[1]


def test_check_missing_file(tmpdir_path):
    path = os.path.join(tmpdir_path, "does-not-exist.conf")
    r = run_echod("-t", "-f", path)
    assert r.returncode == 6
    assert path in r.stderr
    assert "configuration OK" not in r.stdout


# --- 2. -T -------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", GOOD_CONFIGS, ids=os.path.basename)
def test_dump_round_trip(path, tmpdir_path):
    first = run_echod("-T", "-f", path)
    assert first.returncode == 0, first.stderr
    dumped = os.path.join(tmpdir_path, "dumped.conf")
    with open(dumped, "w") as f:
        f.write(first.stdout)
    second = run_echod("-T", "-f", dumped)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    # the dump is itself a valid configuration
    r = check_config(dumped)
    assert r.returncode == 0, r.stderr


def test_dump_shows_defaults_for_empty_file(tmpdir_path):
    path = os.path.join(tmpdir_path, "empty.conf")
    open(path, "w").close()
    r = run_echod("-T", "-f", path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for expected in ("max_connections = 512", "max_per_source = 64", "shutdown_timeout = 10",
                     "log_connections = true"):
        assert expected in lines
    keys = [line.split(" = ", 1)[0] for line in lines]
    assert {"listen", "backlog", "idle_timeout", "user", "group", "pidfile"} <= set(keys)


def test_dump_reflects_the_file():
    """The round trip above would pass for a dump that ignores its input; this one would not."""
    r = run_echod("-T", "-f", os.path.join(ROOT, "tests", "configs", "good", "all-keys.conf"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for expected in ('listen = {"127.0.0.1:7007", "[::1]:7007"}', "backlog = 16", "max_connections = 10000",
                     "max_per_source = 0", "source_prefix_v4 = 24", "idle_timeout = 0", 'user = "nobody"',
                     'group = "nogroup"', 'pidfile = ""', "log_connections = false"):
        assert expected in lines


# --- 3. -V, -h, bad options --------------------------------------------------------------------

def test_version():
    r = run_echod("-V")
    assert r.returncode == 0
    assert re.fullmatch(r"echod \d+\.\d+\.\d+\S*\n", r.stdout), r.stdout


def test_help():
    r = run_echod("-h")
    assert r.returncode == 0
    assert r.stdout.startswith("usage: echod ")
    assert "-f FILE" in r.stdout and "-D" in r.stdout


@pytest.mark.parametrize("args", [("-x",), ("-f",), ("stray-argument",)], ids=["unknown", "missing-arg", "operand"])
def test_bad_usage_exits_2(args):
    r = run_echod(*args)
    assert r.returncode == 2, r
    assert "echod -h" in r.stderr
    assert r.stdout == ""


# --- 4. daemon mode ----------------------------------------------------------------------------

@pytest.fixture
def daemon_conf(tmpdir_path):
    """A config for daemon mode on a fixed free port; kills any daemon its pidfile names at the end."""
    pidfile = os.path.join(tmpdir_path, "echod.pid")
    # the master drops to nobody: the pidfile's directory must be nobody's for it to be removed
    os.chown(tmpdir_path, pwd.getpwnam("nobody").pw_uid, -1)
    port = free_port()
    path = os.path.join(tmpdir_path, "daemon.conf")
    with open(path, "w") as f:
        f.write(base_config(listen=f'"127.0.0.1:{port}"', pidfile=f'"{pidfile}"'))
    pids = []
    yield path, port, pidfile, pids
    for pid in pids:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


def read_pid(pidfile):
    with open(pidfile) as f:
        return int(f.read().strip())


def test_daemon_mode(daemon_conf):
    conf, port, pidfile, pids = daemon_conf
    starter = subprocess.Popen([ECHOD, "-f", conf], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=clean_env())
    out, err = starter.communicate(timeout=15)
    assert starter.returncode == 0, err
    pid = read_pid(pidfile)
    pids.append(pid)
    assert (out, err) == (b"", b"")
    # exit 0 means listening: the echo works right away
    echo_once(("127.0.0.1", port), b"right after the starter returned\n")

    assert pid != starter.pid
    assert not gone(pid)
    assert os.readlink(f"/proc/{pid}/exe") == os.path.realpath(ECHOD)
    _, ppid, _, sid = proc_stat(pid)[:4]
    # orphaned on purpose: adopted by init or by a subreaper among our ancestors
    assert int(ppid) != starter.pid and (int(ppid) == 1 or int(ppid) in [os.getpid()] + ancestors(os.getpid()))
    assert int(sid) != os.getsid(0), "the daemon must run in a session of its own"
    assert int(sid) != pid, "second fork: the daemon must not be a session leader"
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
    assert proc_status(pid)["Umask"] == "0022"

    # a second start finds the pidfile locked, says so, and leaves the first one alone
    second = run_echod("-f", conf)
    assert second.returncode != 0
    assert "locked" in second.stderr and pidfile in second.stderr, second.stderr
    assert read_pid(pidfile) == pid
    echo_once(("127.0.0.1", port))

    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: gone(pid), 10, f"daemon {pid} to exit after SIGTERM")
    assert not os.path.exists(pidfile), "the pidfile must be removed at exit"
    assert refused(port)


def test_daemon_started_by_relative_path_finds_its_spawner(daemon_conf):
    """'./echod' without -D: the daemon moves to / before it starts echod-spawner, which it must
    still find next to the command it was started as."""
    conf, port, pidfile, pids = daemon_conf
    if os.path.exists("/usr/libexec/echod/echod-spawner"):
        pytest.skip("an installed echod-spawner would be found anyway")
    starter = subprocess.run(["./echod", "-f", conf], cwd=os.path.dirname(ECHOD), stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, env=clean_env(), timeout=15)
    assert starter.returncode == 0, starter.stderr
    pid = read_pid(pidfile)
    pids.append(pid)
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    echo_once(("127.0.0.1", port), b"from a spawner found after chdir\n")
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: gone(pid), 10, f"daemon {pid} to exit after SIGTERM")


def test_daemon_closes_inherited_fds(daemon_conf):
    conf, port, pidfile, pids = daemon_conf
    r, w = os.pipe()
    try:
        starter = subprocess.run([ECHOD, "-f", conf], stdin=subprocess.DEVNULL, capture_output=True,
                                 env=clean_env(), pass_fds=(w,), timeout=15)
        pid = read_pid(pidfile)
        pids.append(pid)
        assert starter.returncode == 0, starter.stderr
        os.close(w)
        w = -1
        os.set_blocking(r, False)
        try:
            data = os.read(r, 1)  # b"" only once no process holds the write end
        except BlockingIOError:
            data = None
        assert data == b"", "the daemon still holds the starter's inherited pipe"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_daemon_port_in_use_fails_in_starter(daemon_conf):
    conf, port, pidfile, pids = daemon_conf
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen(1)
        t0 = time.monotonic()
        r = run_echod("-f", conf, timeout=10)
        assert time.monotonic() - t0 < 5
    assert r.returncode != 0
    assert f"Failed to listen on 127.0.0.1:{port}" in r.stderr, r.stderr
    assert "Address already in use" in r.stderr
    assert not os.path.exists(pidfile), "a failed start must not leave a pidfile"


def test_daemon_failure_after_fork_reaches_starter(daemon_conf, tmpdir_path):
    """Errors in the detached daemon (here: the privilege drop) travel back through the readiness pipe."""
    if os.geteuid() != 0:
        pytest.skip("needs root: as non-root echod keeps the current user and never looks the user up")
    conf, port, pidfile, pids = daemon_conf
    with open(conf, "a") as f:
        f.write('user = "nonexistent-user-xyz"\n')
    r = run_echod("-f", conf)
    assert r.returncode == 1
    assert "Failed to drop privileges: no such user 'nonexistent-user-xyz'" in r.stderr, r.stderr
    assert refused(port)


# --- 5. privilege drop -------------------------------------------------------------------------

@needs_root
def test_privilege_drop_master_and_child(echod_factory):
    nobody = pwd.getpwnam("nobody")
    uid, gid = nobody.pw_uid, nobody.pw_gid
    assert gid == grp.getgrnam("nogroup").gr_gid
    # start with a supplementary group, so that a missing setgroups() would show
    setpriv = shutil.which("setpriv")
    wrapper = (setpriv, "--groups=4242", "--") if setpriv else ()
    if setpriv:
        probe = subprocess.run([*wrapper, "grep", "^Groups:", "/proc/self/status"], capture_output=True, text=True)
        assert probe.stdout.split() == ["Groups:", "4242"], probe
    e = echod_factory(user='"nobody"', wrapper=wrapper)
    with connect(e.endpoint()) as s:
        s.sendall(b"hold\n")
        assert s.recv(16) == b"hold\n"
        children = wait_until(e.children, 5, "a child for the open connection")
        assert len(children) == 1
        for pid in (e.proc.pid, children[0]):
            st = proc_status(pid)
            assert st["Uid"].split() == [str(uid)] * 4, (pid, st["Uid"])
            assert st["Gid"].split() == [str(gid)] * 4, (pid, st["Gid"])
            assert st["Groups"] == "", (pid, st["Groups"])
            assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0, (pid, st["CapEff"])
    e.wait_log(r"closed: clean, 5 bytes in, 5 bytes out")


@needs_root
def test_unknown_user_fails_to_start(echod_factory):
    e = echod_factory(user='"nonexistent-user-xyz"', start=False)
    e.check_exit = False  # fails on purpose
    e.start(ready=False)
    assert e.proc.wait(timeout=10) == 1
    assert "Failed to drop privileges: no such user 'nonexistent-user-xyz'" in e.log()
    assert not any(m.get("READY") == "1" for m in drain_notify(e))


# --- 6. process title --------------------------------------------------------------------------

def test_child_process_title_names_peer(echod):
    with connect(echod.endpoint()) as s:
        s.sendall(b"x")
        assert s.recv(1) == b"x"  # the child titles itself before it echoes
        host, port = s.getsockname()
        children = wait_until(echod.children, 5, "a child for the open connection")
        with open(f"/proc/{children[0]}/cmdline", "rb") as f:
            cmdline = f.read()
    # libbsd pads a title shorter than the original argv[0] (here a long build path; never with
    # /usr/sbin/echod) with NULs and a stray "." where argv[0] ended, a known quirk of that
    # setproctitle lineage: compare the first string, and check the old command line is gone
    assert cmdline.split(b"\0")[0].decode() == f"echod: {host}:{port}"
    assert echod.conf_path.encode() not in cmdline and b"-D" not in cmdline, cmdline


# --- 7. SIGTERM drain --------------------------------------------------------------------------

def test_sigterm_drains_open_connections(echod):
    port = echod.endpoint()[1]
    clients = [connect(echod.endpoint()) for _ in range(3)]
    try:
        for i, s in enumerate(clients):
            assert ping(s, b"connection %d\n" % i)
        wait_until(lambda: len(echod.children()) == 3, 5, "3 children")
        echod.proc.send_signal(signal.SIGTERM)
        echod.notify.wait_for(lambda m: m.get("STOPPING") == "1", 5)
        echod.wait_log(r"received SIGTERM, stopping: closing listeners, draining 3 connections")
        assert refused(port), "listeners must be closed while draining"
        for s in clients:
            s.settimeout(5)
            assert s.recv(64) == b"", "expected a clean EOF (FIN) from the draining child"
        # the master waits for the children, which wait for our FIN
        assert echod.proc.poll() is None
    finally:
        for s in clients:
            s.close()
    assert echod.proc.wait(timeout=10) == 0
    echod.wait_log(r"closed: drained, ", count=3)
    assert not re.search(r"closed: (?!drained)", echod.log()), echod.log()
    echod.wait_log(r"stopped: 3 connections served, 0 refused")


def test_sigterm_serves_a_request_still_on_the_wire(echod):
    """A connection admitted just before SIGTERM whose first bytes arrive after it (a client behind
    a load balancer, during a rolling restart) gets them echoed before the FIN, instead of being
    closed empty ("closed: drained, 0 bytes in, 0 bytes out"): the bytes are sent only once the
    master has logged the stop, and signalled its children."""
    s = connect(echod.endpoint())
    try:
        wait_until(lambda: len(echod.children()) == 1, 5, "its child")
        echod.proc.send_signal(signal.SIGTERM)
        echod.wait_log(r"received SIGTERM, stopping: closing listeners, draining 1 connections")
        payload = os.urandom(3000)
        s.sendall(payload)
        s.settimeout(5)
        assert recv_exactly(s, len(payload), "the request sent after the stop") == payload
        assert s.recv(64) == b"", "then a clean EOF (FIN)"
    finally:
        s.close()
    assert echod.proc.wait(timeout=10) == 0
    echod.wait_log(r"closed: drained, 3000 bytes in, 3000 bytes out")


def test_sigterm_serves_connections_already_in_the_backlog(echod):
    """Clients whose handshake the kernel completed before the stop, not yet accepted by echod,
    are taken and served, not reset with the listener. The master is stopped (SIGSTOP) and sent
    SIGTERM, then they connect and send; it handles the stop first when it runs again."""
    os.kill(echod.proc.pid, signal.SIGSTOP)
    clients = []
    try:
        os.kill(echod.proc.pid, signal.SIGTERM)
        for i in range(20):
            s = connect(echod.endpoint())
            s.sendall(b"in the backlog %d\n" % i)
            clients.append(s)
    finally:
        os.kill(echod.proc.pid, signal.SIGCONT)
    for i, s in enumerate(clients):
        want = b"in the backlog %d\n" % i
        s.settimeout(10)
        assert recv_exactly(s, len(want), f"client {i}") == want
        s.close()
    assert echod.proc.wait(timeout=15) == 0
    echod.wait_log(r"stopped: 20 connections served, 0 refused")


def test_sigterm_kills_stuck_connection_after_shutdown_timeout(echod_factory):
    e = echod_factory(shutdown_timeout=1)
    s = connect(e.endpoint())
    try:
        s.sendall(b"first\n")
        assert s.recv(6) == b"first\n"
        # fill both directions: the child can neither read more nor write its echo
        s.setblocking(False)
        deadline = time.monotonic() + 10
        chunk = b"\0" * 65536
        stalled_since = None
        while True:
            try:
                s.send(chunk)
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 0.2:
                    break
                time.sleep(0.01)
            assert time.monotonic() < deadline, "the buffers never filled"
        assert len(e.children()) == 1
        t0 = time.monotonic()
        e.proc.send_signal(signal.SIGTERM)
        e.notify.wait_for(lambda m: m.get("STOPPING") == "1", 5)
        assert e.proc.wait(timeout=5) == 0
        elapsed = time.monotonic() - t0
    finally:
        s.close()
    assert 0.9 <= elapsed < 2.5, f"master exited after {elapsed:.2f} s with shutdown_timeout = 1"
    log = e.log()
    assert "shutdown_timeout (1 s) reached, killing 1 remaining connections" in log
    assert re.search(r"connection 127\.0\.0\.1:\d+ closed: killed-by-SIGKILL", log), log
    assert "stopped: 1 connections served" in log


# --- 8. socket activation ----------------------------------------------------------------------

def test_socket_activation(echod_factory):
    activate = shutil.which("systemd-socket-activate")
    if not activate:
        pytest.skip("systemd-socket-activate not installed (package systemd)")
    port, configured, later = free_port(), free_port(), free_port()
    assert len({port, configured, later}) == 3
    e = echod_factory(start=False, listen=f'"127.0.0.1:{configured}"')
    env = clean_env()
    e.wrapper = [activate, "-l", f"127.0.0.1:{port}", "--fdname=echo", "-E", f"NOTIFY_SOCKET={e.notify.path}",
                 "-E", f"ASAN_OPTIONS={env['ASAN_OPTIONS']}", "-E", f"UBSAN_OPTIONS={env['UBSAN_OPTIONS']}"]
    e.start(ready=False)
    e.wait_log(rf"Listening on 127\.0\.0\.1:{port}\b")
    # without --accept, systemd-socket-activate execs echod on the first connection
    first = connect(("127.0.0.1", port))
    try:
        e.wait_ready()
        e.wait_log(r"socket-activated: using 1 socket\(s\) passed by systemd, ignoring 'listen'")
        assert e.addresses == [f"127.0.0.1:{port}"]
        assert echo_roundtrip(first, b"the connection that woke us\n") == b"the connection that woke us\n"
    finally:
        first.close()
    echo_once(("127.0.0.1", port))
    assert refused(configured), "under socket activation echod must not bind its 'listen' addresses"

    # a reload keeps systemd's socket and still binds nothing of its own
    e.write_config(base_config(listen=f'"127.0.0.1:{later}"'))
    e.reload()
    e.wait_log(r"reloaded configuration from ")
    echo_once(("127.0.0.1", port), b"after SIGHUP\n")
    assert refused(later) and refused(configured)
    assert e.stop() == 0


# --- 9. watchdog -------------------------------------------------------------------------------

def test_watchdog_pings(echod_factory):
    e = echod_factory(env={"WATCHDOG_USEC": "200000"})
    t0 = time.monotonic()
    pings = lambda: sum(1 for m in e.notify.messages if m.get("WATCHDOG") == "1")  # noqa: E731
    while pings() < 2:
        left = 2.0 - (time.monotonic() - t0)
        assert left > 0, f"only {pings()} WATCHDOG=1 in 2 s with WATCHDOG_USEC=200000"
        try:
            e.notify.wait_for(lambda m: m.get("WATCHDOG") == "1", left)
        except TimeoutError:
            pass
    assert e.proc.poll() is None
