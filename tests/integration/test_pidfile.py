"""The pidfile in daemon mode (no -D): echod opens it as root, so it must never follow a symlink
or write through a hard link planted at its path; a normal start writes the pid and a stop
removes the file."""
import os
import pwd
import signal
import socket
import stat
import subprocess

import pytest

from conftest import ECHOD, base_config, clean_env, free_port, wait_until

PRECIOUS = "root:x:0:0:precious content that must survive\n"


def gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return True
    except ConnectionRefusedError:
        return False


@pytest.fixture
def daemon(tmpdir_path):
    """start() runs 'echod -f CONF' (daemon mode) with pidfile at tmpdir/echod.pid; any daemon
    that got started (also one the old code let through) is killed at the end."""
    pidfile = os.path.join(tmpdir_path, "echod.pid")
    # the master drops to nobody: the pidfile's directory must be nobody's for it to be removed
    os.chown(tmpdir_path, pwd.getpwnam("nobody").pw_uid, -1)
    port = free_port()
    conf = os.path.join(tmpdir_path, "daemon.conf")
    with open(conf, "w") as f:
        f.write(base_config(listen=f'"127.0.0.1:{port}"', pidfile=f'"{pidfile}"', control_socket='""'))
    started = []

    def start():
        r = subprocess.run([ECHOD, "-f", conf], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           env=clean_env(), timeout=30)
        return r

    class D:
        pass
    d = D()
    d.pidfile, d.port, d.start, d.pids = pidfile, port, start, started
    yield d
    for pid in started:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)
    # the old code wrote the daemon's pid through the planted link: find and stop that daemon
    for name in os.listdir(tmpdir_path):
        try:
            with open(os.path.join(tmpdir_path, name)) as f:
                pid = int(f.read().strip())
        except (ValueError, OSError, UnicodeDecodeError):
            continue
        try:
            with open(f"/proc/{pid}/exe", "rb"):
                pass
            if os.readlink(f"/proc/{pid}/exe") == os.path.realpath(ECHOD):
                os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            pass


def plant_target(tmpdir_path):
    target = os.path.join(tmpdir_path, "precious")
    with open(target, "w") as f:
        f.write(PRECIOUS)
    os.chmod(target, 0o600)
    return target


def assert_untouched(target):
    with open(target) as f:
        assert f.read() == PRECIOUS, "echod wrote through the planted pidfile"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


def test_pidfile_symlink_is_refused(daemon, tmpdir_path):
    target = plant_target(tmpdir_path)
    os.symlink(target, daemon.pidfile)
    r = daemon.start()
    assert r.returncode == 1, r
    assert f"{daemon.pidfile} is a symbolic link: refusing to follow it" in r.stderr, r.stderr
    assert_untouched(target)
    assert os.path.islink(daemon.pidfile) and os.readlink(daemon.pidfile) == target
    assert not listening(daemon.port)


def test_pidfile_dangling_symlink_is_refused(daemon, tmpdir_path):
    """A link to a file that does not exist yet: following it would create that file as root."""
    target = os.path.join(tmpdir_path, "created-by-root")
    os.symlink(target, daemon.pidfile)
    r = daemon.start()
    assert r.returncode == 1, r
    assert "is a symbolic link" in r.stderr, r.stderr
    assert not os.path.exists(target)
    assert not listening(daemon.port)


def test_pidfile_hard_link_is_refused(daemon, tmpdir_path):
    target = plant_target(tmpdir_path)
    os.link(target, daemon.pidfile)
    r = daemon.start()
    assert r.returncode == 1, r
    assert f"{daemon.pidfile} has 2 hard links: refusing to use it as the pidfile" in r.stderr, r.stderr
    assert_untouched(target)
    assert not listening(daemon.port)


def test_pidfile_written_and_removed(daemon):
    # a stale pidfile from a crashed run, longer than any pid: replaced whole, not overwritten in part
    with open(daemon.pidfile, "w") as f:
        f.write("123456789012345\n")
    r = daemon.start()
    assert r.returncode == 0, r.stderr
    with open(daemon.pidfile) as f:
        text = f.read()
    pid = int(text)
    daemon.pids.append(pid)
    assert text.rstrip("\n") == str(pid)
    st = os.lstat(daemon.pidfile)
    assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1
    assert os.readlink(f"/proc/{pid}/exe") == os.path.realpath(ECHOD)
    assert listening(daemon.port)
    # a second start finds it locked and leaves it alone
    second = daemon.start()
    assert second.returncode == 1 and "locked by another running echod" in second.stderr, second.stderr
    with open(daemon.pidfile) as f:
        assert int(f.read()) == pid

    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: gone(pid), 15, f"daemon {pid} to exit after SIGTERM")
    assert not os.path.exists(daemon.pidfile), "the pidfile must be removed at exit"
