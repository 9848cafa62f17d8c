"""The echo paths under valgrind memcheck, forked children traced too: 0 errors, no fd leaked
by the master. (The seccomp sandbox is off here: valgrind's own system calls in a child are
not the echo loop's; every other test runs with it on.)"""
import os
import re
import shutil
import socket
import subprocess

import pytest

from conftest import ECHOD, closed_by_server, connect, echo_roundtrip, ping, wait_until

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
VALGRIND = ["valgrind", "--trace-children=yes", "--track-fds=yes", "--error-exitcode=99", "--leak-check=full",
            "--errors-for-leak-kinds=definite", "--child-silent-after-fork=no"]


@pytest.fixture
def grind(echod_factory):
    if not shutil.which("valgrind"):
        pytest.skip("valgrind is not installed")
    if os.environ.get("ECHOD_BUILD_DIR", "").endswith("asan"):
        pytest.skip("valgrind and AddressSanitizer do not mix: run in the plain build")

    def make(**keys):
        e = echod_factory(start=False, sandbox="false", **keys)
        # each process its own log: the spawner and its children have /dev/null as stderr, and the
        # master drops to nobody, who must be able to create the spawner's and children's
        os.chmod(e.dir, 0o777)
        e.wrapper = VALGRIND + [f"--log-file={e.dir}/vg.%p"]
        # the shipped spawner is static-pie, whose built-in malloc valgrind cannot replace: the
        # master finds its spawner beside argv[0], so point both at the build's dynamic twin
        # (copies, not links: valgrind must follow the exec by a path nobody can reach, wherever
        # the build tree is)
        dynamic = os.path.join(os.path.dirname(ECHOD), "echod-spawner-dynamic")
        if os.path.exists(dynamic):
            shutil.copy2(ECHOD, os.path.join(e.dir, "echod"))
            shutil.copy2(dynamic, os.path.join(e.dir, "echod-spawner"))
            e.binary = os.path.join(e.dir, "echod")
        e.start()
        return e
    return make


def test_echo_under_valgrind(grind):
    e = grind(idle_timeout=30)
    for size in (0, 1, 65536, 4 * 1024 * 1024):
        data = os.urandom(size)
        with connect(e.endpoint(), timeout=60) as s:
            assert echo_roundtrip(s, data) == data
    with connect(e.endpoint(), timeout=60) as s:  # a peer reset costs only its connection
        s.sendall(b"x" * 100000)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    e.wait_log(r"closed: clean, 4194304 bytes in", timeout=60)
    e.reload(timeout=60)
    rc = e.stop(timeout=60)
    e.check_exit = False  # checked here, with valgrind's own exit code in mind
    log = e.log() + "".join(open(os.path.join(e.dir, f), errors="replace").read()
                            for f in sorted(os.listdir(e.dir)) if f.startswith("vg."))
    assert rc == 0, log[-3000:]
    # valgrind watched the master and every child (5 connections): each sums up with 0 errors
    summaries = dict(re.findall(r"==(\d+)== ERROR SUMMARY: (\d+) errors", log))
    assert str(e.proc.pid) in summaries and len(summaries) >= 6, summaries
    assert set(summaries.values()) == {"0"}, summaries
    # the master closes every fd of its own before it exits: only stdio is left open
    master = e.proc.pid
    # (and valgrind's own log file, which it reports as inherited)
    open_fds = [fd for fd, what in re.findall(rf"=={master}== Open (?:file descriptor|AF_\w+ socket) (\d+):? ?(.*)", log)
                if not what.startswith(os.path.join(e.dir, "vg."))]
    assert set(map(int, open_fds)) <= {0, 1, 2}, re.findall(rf"=={master}== Open.*\n.*\n.*", log)


def callgrind_instructions(pid, directory):
    """Dump the running callgrind's counters since the last zeroing; returns the instructions."""
    before = set(os.listdir(directory))
    subprocess.run(AS_NOBODY + ["callgrind_control", "-d", str(pid)], check=True, capture_output=True, timeout=60)
    wait_until(lambda: set(os.listdir(directory)) - before, 30, "callgrind's dump")
    (dump,) = set(os.listdir(directory)) - before
    text = ""
    wait_until(lambda: re.search(r"^(summary|totals): \d+", open(os.path.join(directory, dump)).read(), re.M),
               30, "a complete dump")
    text = open(os.path.join(directory, dump)).read()
    return int(re.search(r"^(?:summary|totals): (\d+)", text, re.M).group(1))


def refusal_instructions(echod_factory, held, refusals=300, wave=100):
    """The master's instructions (callgrind, not time) per connection refused at capacity, with
    `held` connections admitted."""
    # started as nobody (user = "" is then no change): callgrind_control reaches a valgrind of its
    # own user only, and root here cannot touch another user's limits or files
    e = echod_factory(start=False, max_connections=held, max_per_source=0, log_connections="false", sandbox="false",
                      user='""', control_socket='""')
    out = os.path.join(e.dir, "cg")
    os.mkdir(out)
    for d in (e.dir, out, os.path.dirname(e.conf_path)):
        os.chmod(d, 0o777)
    # copies nobody can reach, wherever the build tree is (a 0700 home)
    for name in ("echod", "echod-spawner"):
        shutil.copy2(os.path.join(os.path.dirname(ECHOD), name), os.path.join(e.dir, name))
    e.binary = os.path.join(e.dir, "echod")
    # the master only: the spawner and the children run natively
    e.wrapper = AS_NOBODY + ["valgrind", "--tool=callgrind", "--trace-children=no", f"--callgrind-out-file={out}/cg.%p"]
    e.start()
    socks = [connect(e.endpoint(), timeout=60) for _ in range(held)]
    for s in socks:
        assert ping(s, b"x")  # admitted and echoing, and kept open
    subprocess.run(AS_NOBODY + ["callgrind_control", "-z", str(e.proc.pid)], check=True, capture_output=True,
                   timeout=60)
    for _ in range(refusals // wave):
        batch = [connect(e.endpoint(), timeout=60) for _ in range(wave)]
        for s in batch:
            assert closed_by_server(s)
    n = callgrind_instructions(e.proc.pid, out)
    for s in socks:
        s.close()
    e.check_exit = False
    e.stop(timeout=60)
    return n / refusals


def test_refusal_cost_does_not_grow_with_connections_held(echod_factory):
    """A refusal at capacity reads the counts the master keeps: it costs the same with 16 or 1,024
    connections held (4a6b3b7 walked the slot table on every one). Counted in instructions, so
    neither the host's speed nor its load decide the outcome."""
    if not shutil.which("callgrind_control"):
        pytest.skip("valgrind is not installed")
    if os.environ.get("ECHOD_BUILD_DIR", "").endswith("asan"):
        pytest.skip("valgrind and AddressSanitizer do not mix: run in the plain build")
    config_h = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(ECHOD))), "build-config.h")
    if "#define ECHOD_INVARIANTS 1" in open(config_h).read():
        pytest.skip("an invariants build walks its tables after every event, on purpose")
    few = refusal_instructions(echod_factory, 16)
    many = refusal_instructions(echod_factory, 1024)
    print(f"instructions per refusal: {few:.0f} with 16 held, {many:.0f} with 1,024 held")
    assert many < 1.25 * few, (few, many)
