"""max_connections against the open files echod may have.

The master holds each admitted connection's socket until its process is gone (children.c), beside
its listeners and a few dozen of its own: max_connections + listeners + 32 descriptors. echod
raises its soft RLIMIT_NOFILE to the hard limit at start; a max_connections that still does not
fit is a configuration error at start, in 'echod -t' (what ExecStartPre= runs) and at a reload,
naming the file, the line, the key and the limit. Before, echod started with a warning and
connections beyond the limit waited in the backlog or were refused, with nothing in the
configuration to say why.
"""
import os
import re
import subprocess

from conftest import ECHOD, base_config, connect, ping, sanitizer_env


def run_limited(nofile, *args):
    env = sanitizer_env(dict(os.environ))
    for k in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "JOURNAL_STREAM"):
        env.pop(k, None)
    return subprocess.run(["prlimit", f"--nofile={nofile}", "--", ECHOD, *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, env=env, timeout=30)


def conf_file(tmpdir_path, max_connections):
    path = os.path.join(tmpdir_path, "echod.conf")
    with open(path, "w") as f:
        f.write(base_config(max_connections=max_connections, max_per_source=0, pidfile='""',
                            control_socket='""'))
    return path


def limits(pid):
    """(soft, hard) RLIMIT_NOFILE of pid."""
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no 'Max open files' line")


def test_too_few_descriptors_is_a_configuration_error(tmpdir_path):
    """5000 connections + 1 listener + 32 do not fit in 1024: 'echod -t' and the start say so,
    with file:line, the key and the limit, and exit 6 (invalid configuration) without listening."""
    path = conf_file(tmpdir_path, 5000)
    line = open(path).read().splitlines().index("max_connections = 5000") + 1
    want = (f"{path}:{line}: max_connections: 5000 needs 5033 file descriptors; this process may have 1024 "
            "(raise LimitNOFILE= / ulimit -n)")
    for args in (("-t",), ("-D", "-e")):
        r = run_limited("1024:1024", *args, "-f", path)
        assert r.returncode == 6, (args, r)
        assert want in r.stderr, (args, r.stderr)
        assert "listening on" not in r.stderr
    # the dump does not depend on the process's limits
    r = run_limited("1024:1024", "-T", "-f", path)
    assert r.returncode == 0 and "max_connections = 5000" in r.stdout, r
    # just enough: 5033 fits
    r = run_limited("5033:5033", "-t", "-f", path)
    assert r.returncode == 0 and "configuration OK" in r.stdout, r


def test_default_max_connections_names_the_default(tmpdir_path):
    path = os.path.join(tmpdir_path, "echod.conf")
    with open(path, "w") as f:
        f.write(base_config())
    r = run_limited("100:100", "-t", "-f", path)
    assert r.returncode == 6, r
    assert (f"{path}: max_connections: 512 (the default) needs 545 file descriptors; this process may have 100 "
            in r.stderr), r.stderr


def test_soft_limit_is_raised_to_the_hard_one_and_a_reload_is_checked(echod_factory):
    """Soft 1024, hard 8192: 5000 fits once the soft limit is raised, which echod does; a reload
    to 9000 does not fit and keeps the old configuration, saying why."""
    e = echod_factory(start=False, max_connections=5000, max_per_source=0)
    e.wrapper = ["prlimit", "--nofile=1024:8192", "--"]
    e.start()
    assert limits(e.proc.pid) == (8192, 8192)
    s = connect(e.endpoint())
    ping(s)
    with open(e.conf_path) as f:
        text = f.read()
    e.write_config(text.replace("max_connections = 5000", "max_connections = 9000"))
    line = [i for i, l in enumerate(text.splitlines(), 1) if l.startswith("max_connections")][0]
    e.reload()
    e.wait_log(re.escape(f"{e.conf_path}:{line}: max_connections: 9000 needs 9033 file descriptors; this process "
                         "may have 8192 (raise LimitNOFILE= / ulimit -n)"))
    assert "Failed to reload, keeping the old configuration" in e.log()
    ping(s)  # still served, by the old configuration
    s.close()
