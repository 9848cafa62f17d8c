"""Defaults never invalidate what the user wrote, and numbers in echod.conf are decimal.

Lowering only max_connections below max_per_source's default (64) used to make the file invalid
("max_per_source (64) exceeds max_connections (2)"). A max_per_source the file leaves out now
follows a smaller max_connections: it is min(64, max_connections), and 'echod -T' shows that
value. One the file writes, 64 included, is still checked as written, an error naming its
file:line. The shipped file therefore shows max_per_source only as a comment ("#max_per_source =
64"), so lowering only its max_connections is enough.
libconfuse read "0300" as octal (192) and "0x10" as hex: such values are now errors.
"""
import os
import re
import subprocess

import pytest

from conftest import ECHOD, ROOT, base_config, connect, ping, refused, sanitizer_env, status_json

SHIPPED = os.path.join(ROOT, "conf", "echod.conf")
BAD = os.path.join(ROOT, "tests", "configs", "bad")


def run_echod(*args):
    env = sanitizer_env(dict(os.environ))
    for k in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "JOURNAL_STREAM"):
        env.pop(k, None)
    return subprocess.run([ECHOD, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
                          timeout=30)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def shipped_with(tmpdir, **keys):
    """The shipped echod.conf with only the given keys changed (a commented-out one uncommented)."""
    with open(SHIPPED) as f:
        text = f.read()
    for k, v in keys.items():
        text, n = re.subn(rf"(?m)^{k} = .*$", f"{k} = {v}", text)
        if n == 0:
            text, n = re.subn(rf"(?m)^#{k} = .*$", f"{k} = {v}", text)
        assert n == 1, k
    return write(os.path.join(tmpdir, "echod.conf"), text)


def dumped(path):
    r = run_echod("-T", "-f", path)
    assert r.returncode == 0, r.stderr
    return dict(line.split(" = ", 1) for line in r.stdout.splitlines())


# --- max_per_source's default and a lower max_connections --------------------------------------

def test_only_max_connections_starts_and_refuses_the_third_as_capacity(echod_factory, tmpdir_path):
    # max_per_source, left out, is then 2 as well; a per-source limit that can never bind before
    # max_connections does refuses as capacity
    ctl = os.path.join(tmpdir_path, "control")
    e = echod_factory(max_connections=2, control_socket=f'"{ctl}"')
    a, b = connect(e.endpoint()), connect(e.endpoint())
    assert ping(a) and ping(b)
    c = connect(e.endpoint())
    assert refused(c)
    e.wait_log(r"refused connection from 127\.0\.0\.1:\d+: capacity \(max_connections=2 reached\)")
    st = status_json(e)
    assert st["totals"]["max"] == 2
    assert st["refused"]["capacity"] == 1 and st["refused"]["per-source"] == 0
    assert "max_connections=2, max_per_source=2" in e.log()
    for s in (a, b, c):
        s.close()


def test_reload_lowering_only_max_connections_is_applied(echod_factory, tmpdir_path):
    ctl = os.path.join(tmpdir_path, "control")
    e = echod_factory(control_socket=f'"{ctl}"')
    assert status_json(e)["totals"]["max"] == 512
    e.write_config(base_config(max_connections=2, control_socket=f'"{ctl}"'))
    e.reload()
    e.wait_log(rf"reloaded configuration from {re.escape(e.conf_path)}")
    assert "Failed to reload" not in e.log()
    st = status_json(e)
    assert st["config"]["reloads"] == 1 and st["totals"]["max"] == 2
    a, b = connect(e.endpoint()), connect(e.endpoint())
    assert ping(a) and ping(b)
    c = connect(e.endpoint())
    assert refused(c)
    e.wait_log(r"refused connection from 127\.0\.0\.1:\d+: capacity \(max_connections=2 reached\)")
    for s in (a, b, c):
        s.close()


def test_shipped_config_shows_max_per_source_as_a_comment():
    with open(SHIPPED) as f:
        text = f.read()
    assert re.search(r"(?m)^#max_per_source = 64$", text)
    assert not re.search(r"(?m)^max_per_source\s*=", text)
    assert dumped(SHIPPED)["max_per_source"] == "64"


def test_shipped_config_with_only_max_connections_lowered_is_ok(tmpdir_path):
    path = shipped_with(tmpdir_path, max_connections=2)
    r = run_echod("-t", "-f", path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "configuration OK\n", "")
    r = run_echod("-T", "-f", path)
    assert r.returncode == 0, r.stderr
    assert re.search(r"(?m)^max_per_source = 2$", r.stdout), r.stdout
    d = dumped(path)
    assert (d["max_connections"], d["max_per_source"]) == ("2", "2")
    # a max_per_source written above max_connections is still the user's error, 64 included
    for value in (3, 64):
        path = shipped_with(tmpdir_path, max_connections=2, max_per_source=value)
        line = next(i for i, s in enumerate(open(path), 1) if s.startswith("max_per_source ="))
        r = run_echod("-t", "-f", path)
        assert r.returncode == 6, r
        assert f"{path}:{line}: max_per_source ({value}) exceeds max_connections (2)" in r.stderr


def test_written_default_is_checked_as_written(tmpdir_path):
    for text, line in (("max_connections = 2\nmax_per_source = 64\n", 2),
                       ("max_per_source = 64\n\nmax_connections = 2\n", 3)):
        path = write(os.path.join(tmpdir_path, "c.conf"), text)
        for opt in ("-t", "-T"):
            r = run_echod(opt, "-f", path)
            assert r.returncode == 6, (text, r)
            assert f"{path}:{line}: max_per_source (64) exceeds max_connections (2)" in r.stderr, r.stderr


def test_dump_prints_the_value_in_force(tmpdir_path):
    for text, want in (("max_connections = 2\n", "2"), ("max_connections = 63\n", "63"),
                       ("max_connections = 64\n", "64"), ("max_connections = 100\n", "64"), ("", "64"),
                       ("#max_per_source = 64\nmax_connections = 2\n", "2"),
                       ("max_connections = 2\nmax_per_source = 1\n", "1"),
                       ("max_connections = 2\nmax_per_source = 0\n", "0"),
                       ("max_connections = 100\nmax_per_source = 64\n", "64")):
        path = write(os.path.join(tmpdir_path, "c.conf"), text)
        assert dumped(path)["max_per_source"] == want, text


# --- numbers are decimal -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["int-leading-zero.conf", "int-hex.conf", "int-leading-zero-quoted.conf",
                                  "float-hex.conf", "float-leading-zero.conf"])
def test_check_refuses_non_decimal_numbers(name):
    path = os.path.join(BAD, name)
    with open(path) as f:
        line, text = re.match(r"# expect: (\d+): (.+)$", f.readline()).groups()
    r = run_echod("-t", "-f", path)
    assert r.returncode == 6, r
    assert "configuration OK" not in r.stdout
    assert f"echod: {path}:{line}: {text}" in r.stderr


def test_decimal_numbers_mean_what_they_say(tmpdir_path):
    path = write(os.path.join(tmpdir_path, "c.conf"), "idle_timeout = 300\nstall_timeout = 10\n"
                                                      "connection_rate = 0.5\n")
    d = dumped(path)
    assert (d["idle_timeout"], d["stall_timeout"], d["connection_rate"]) == ("300", "10", "0.5")
    path = write(os.path.join(tmpdir_path, "c.conf"), "idle_timeout = 0300\n")
    r = run_echod("-T", "-f", path)
    assert r.returncode == 6 and "idle_timeout = 192" not in r.stdout
    assert f"{path}:1: idle_timeout: '0300' is not a decimal integer" in r.stderr
