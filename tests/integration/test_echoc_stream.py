"""echoc stream mode (the default) and its command line: every byte verified, exit codes
0 intact / 1 mismatch or short / 2 usage or connection error, each with a clear message."""
import json
import os
import socket
import subprocess
import time

import pytest

from conftest import ECHOC, sanitizer_env
from echo_servers import EchoServer, full_backlog_listener, run_echoc

pytestmark = pytest.mark.timeout(60)

DATA = os.urandom(300_000)


def test_help_fits_a_screen_and_version():
    r = run_echoc("-h")
    assert r.returncode == 0
    lines = r.stdout.decode().splitlines()
    assert len(lines) <= 24 and "Usage: echoc" in lines[0]
    r = run_echoc("--version")
    assert r.returncode == 0 and r.stdout.decode().startswith("echoc ")


@pytest.mark.parametrize("args,msg", [
    ([], "missing HOST"),
    (["-c", "abc", "127.0.0.1"], "-c"),
    (["-s", "0", "127.0.0.1"], "-s"),
    (["--proxy", "v3", "127.0.0.1"], "v1 or v2"),
    (["127.0.0.1", "70000"], "invalid port"),
    (["--load", "-c", "3", "127.0.0.1"], "--load does not combine"),
    (["--bogus", "127.0.0.1"], "unrecognized option"),
])
def test_usage_errors_exit_2(args, msg):
    r = run_echoc(*args)
    assert r.returncode == 2
    assert msg in r.stderr and "Try 'echoc --help'" in r.stderr


def test_stream_against_correct_server():
    with EchoServer("echo") as srv:
        r = run_echoc(*srv.endpoint(), input=DATA)
    assert r.returncode == 0, r.stderr
    assert r.stdout == DATA and r.stderr == ""


def test_stream_ipv6():
    try:
        srv = EchoServer("echo", family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with srv:
        r = run_echoc("-6", "::1", srv.port, input=b"over six\n")
        assert r.returncode == 0 and r.stdout == b"over six\n"
        r = run_echoc("-4", "::1", srv.port, input=b"x")
        assert r.returncode == 2 and "cannot resolve ::1" in r.stderr


def test_stream_against_echod(echod):
    host, port = echod.endpoint()
    r = run_echoc(host, port, input=DATA)
    assert r.returncode == 0, r.stderr
    assert r.stdout == DATA


def test_stream_empty_input(echod):
    r = run_echoc(*echod.endpoint(), input=b"")
    assert r.returncode == 0 and r.stdout == b""


def test_flipped_byte_detected_with_offset():
    with EchoServer("flip", offset=123_457) as srv:
        r = run_echoc(*srv.endpoint(), input=DATA)
    assert r.returncode == 1
    assert "mismatch at byte offset 123457" in r.stderr
    # stdout holds only the verified bytes
    assert r.stdout == DATA[:123_457]


def test_truncated_echo_detected():
    with EchoServer("truncate", after=5000) as srv:
        r = run_echoc(*srv.endpoint(), input=DATA)
    assert r.returncode == 1
    assert "short echo: server closed the connection after 5000 of" in r.stderr
    assert r.stdout == DATA[:5000]


def test_silent_server_times_out():
    with EchoServer("silent") as srv:
        t0 = time.monotonic()
        r = run_echoc("-W", "0.5", *srv.endpoint(), input=b"hello\n")
        elapsed = time.monotonic() - t0
    assert r.returncode == 1
    assert "no echo for 0.5 s: 0 of 6 bytes echoed" in r.stderr
    assert 0.5 <= elapsed < 10


def test_reset_mid_stream_detected():
    with EchoServer("reset", after=4096) as srv:
        r = run_echoc(*srv.endpoint(), input=DATA)
    assert r.returncode == 1
    assert "connection reset by peer after" in r.stderr
    assert r.stdout == DATA[:len(r.stdout)] and len(r.stdout) <= 4096


def test_refused_exit_2():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]  # bound, not listening: connections are refused
    try:
        r = run_echoc("127.0.0.1", port, input=b"x")
    finally:
        s.close()
    assert r.returncode == 2
    assert r.stderr.strip() == f"echoc: connect to 127.0.0.1:{port}: Connection refused"


def test_unknown_host_exit_2():
    r = run_echoc("no-such-host.invalid", input=b"x")
    assert r.returncode == 2
    assert "cannot resolve no-such-host.invalid" in r.stderr


def test_connect_timeout_exit_2():
    ls, port, fillers, full = full_backlog_listener()
    try:
        if not full:
            pytest.skip("kernel accepted beyond the backlog; cannot provoke a connect timeout")
        t0 = time.monotonic()
        r = run_echoc("-W", "0.5", "127.0.0.1", port, input=b"x")
        elapsed = time.monotonic() - t0
    finally:
        for f in fillers:
            f.close()
        ls.close()
    assert r.returncode == 2
    assert f"connect to 127.0.0.1:{port}: Connection timed out" in r.stderr
    assert 0.5 <= elapsed < 10


def test_stream_json_report():
    with EchoServer("echo") as srv:
        r = run_echoc("--json", *srv.endpoint(), input=DATA)
    assert r.returncode == 0
    d = json.loads(r.stdout)
    assert set(d) == {"start", "intervals", "end", "error"}
    assert d["error"] is None
    assert d["start"]["test_start"]["mode"] == "stream"
    assert d["start"]["connected"][0]["remote_port"] == srv.port
    assert d["end"]["bytes_sent"] == d["end"]["bytes_echoed"] == len(DATA)
    assert d["end"]["intact"] is True and d["end"]["mismatch_offset"] is None


def test_stream_json_mismatch_and_refusal_keep_exit_codes():
    with EchoServer("flip", offset=77) as srv:
        r = run_echoc("--json", *srv.endpoint(), input=DATA)
    assert r.returncode == 1
    d = json.loads(r.stdout)
    assert d["end"]["mismatch_offset"] == 77 and "mismatch at byte offset 77" in d["error"]

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    r = run_echoc("--json", "127.0.0.1", port, input=b"x")
    s.close()
    assert r.returncode == 2  # independent of --json (iperf3 gets this wrong)
    d = json.loads(r.stdout)
    assert "Connection refused" in d["error"] and d["start"]["connected"] == []


def test_256_mib_through_a_pipe(echod):
    """A client that wrote everything before reading would deadlock here."""
    host, port = echod.endpoint()
    env = sanitizer_env(dict(os.environ))
    script = (f"head -c 256M /dev/urandom | tee >(sha256sum > in.sha) "
              f"| {ECHOC} -v {host} {port} | sha256sum > out.sha; echo ${{PIPESTATUS[2]}} > rc")
    d = echod.dir
    t0 = time.monotonic()
    p = subprocess.run(["bash", "-c", script], cwd=d, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert p.returncode == 0, p.stderr
    rc = open(os.path.join(d, "rc")).read().strip()
    assert rc == "0", p.stderr
    # tee's process substitution may finish a moment after the pipeline
    for _ in range(100):
        sha_in = open(os.path.join(d, "in.sha")).read().split()
        if sha_in:
            break
        time.sleep(0.05)
    sha_out = open(os.path.join(d, "out.sha")).read().split()
    assert sha_in[0] == sha_out[0]
    assert "268435456 bytes sent, 268435456 echoed intact" in p.stderr
    print(f"256 MiB stream through echod: {elapsed:.2f} s; {p.stderr.strip()}")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_header_sent_and_not_verified(version):
    with EchoServer("proxy") as srv:
        r = run_echoc("--proxy", version, "--proxy-source", "203.0.113.7:51234", *srv.endpoint(), input=b"payload\n")
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"payload\n"
        (h,) = srv.headers
    if version == "v1":
        assert h == f"PROXY TCP4 203.0.113.7 127.0.0.1 51234 {srv.port}\r\n".encode()
    else:
        assert h[:12] == b"\r\n\r\n\x00\r\nQUIT\n" and h[12] == 0x21 and h[13] == 0x11
        assert h[16:20] == socket.inet_aton("203.0.113.7") and h[20:24] == socket.inet_aton("127.0.0.1")
        assert int.from_bytes(h[24:26], "big") == 51234 and int.from_bytes(h[26:28], "big") == srv.port


def test_proxy_default_source_is_our_address():
    with EchoServer("proxy") as srv:
        r = run_echoc("--proxy", "v1", *srv.endpoint(), input=b"x")
        assert r.returncode == 0, r.stderr
        (h,) = srv.headers
    parts = h.decode().split()
    assert parts[:4] == ["PROXY", "TCP4", "127.0.0.1", "127.0.0.1"] and parts[5] == str(srv.port)


def test_interactive_line_by_line():
    """On a terminal-like pipe each line comes back before the next is typed."""
    with EchoServer("echo") as srv:
        env = sanitizer_env(dict(os.environ))
        p = subprocess.Popen([ECHOC, *map(str, srv.endpoint())], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)
        try:
            for line in (b"first line\n", b"second\n", b"third and last\n"):
                p.stdin.write(line)
                p.stdin.flush()
                assert p.stdout.readline() == line
            p.stdin.close()
            assert p.wait(10) == 0
        finally:
            p.kill()
            p.wait()


def test_interactive_on_a_terminal():
    """stdin and stdout a real pty in canonical mode: each typed line is echoed back at once
    (after the terminal's own local echo), and Ctrl-D ends the session cleanly."""
    import pty
    import select

    def read_until(fd, want, timeout=10):
        got = b""
        deadline = time.monotonic() + timeout
        while want not in got:
            left = deadline - time.monotonic()
            assert left > 0, f"never saw {want!r}; got {got!r}"
            if select.select([fd], [], [], left)[0]:
                try:
                    got += os.read(fd, 4096)
                except OSError:  # EIO: the slave side closed
                    break
        return got

    with EchoServer("echo") as srv:
        master, slave = pty.openpty()
        env = sanitizer_env(dict(os.environ))
        p = subprocess.Popen([ECHOC, *map(str, srv.endpoint())], stdin=slave, stdout=slave,
                             stderr=subprocess.PIPE, env=env)
        os.close(slave)
        try:
            for line in (b"typed one", b"and another"):
                os.write(master, line + b"\n")
                # the tty's local echo, then echoc's output of the server's echo
                read_until(master, line + b"\r\n" + line + b"\r\n")
            os.write(master, b"\x04")  # Ctrl-D: EOF at the start of a line
            assert p.wait(10) == 0, p.stderr.read()
        finally:
            p.kill()
            p.wait()
            os.close(master)
