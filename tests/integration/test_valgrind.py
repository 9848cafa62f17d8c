"""The echo paths under valgrind memcheck, forked children traced too: 0 errors, no fd leaked
by the master. (The seccomp sandbox is off here: valgrind's own system calls in a child are
not the echo loop's; every other test runs with it on.)"""
import os
import re
import shutil
import socket

import pytest

from conftest import ECHOD, connect, echo_roundtrip

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
        e.wrapper = VALGRIND
        # the shipped spawner is static-pie, whose built-in malloc valgrind cannot replace: the
        # master finds its spawner beside argv[0], so point both at the build's dynamic twin
        dynamic = os.path.join(os.path.dirname(ECHOD), "echod-spawner-dynamic")
        if os.path.exists(dynamic):
            os.symlink(ECHOD, os.path.join(e.dir, "echod"))
            os.symlink(dynamic, os.path.join(e.dir, "echod-spawner"))
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
    log = e.log()
    assert rc == 0, log[-3000:]
    # valgrind watched the master and every child (5 connections): each sums up with 0 errors
    summaries = dict(re.findall(r"==(\d+)== ERROR SUMMARY: (\d+) errors", log))
    assert str(e.proc.pid) in summaries and len(summaries) >= 6, summaries
    assert set(summaries.values()) == {"0"}, summaries
    # the master closes every fd of its own before it exits: only stdio is left open
    master = e.proc.pid
    open_fds = re.findall(rf"=={master}== Open (?:file descriptor|AF_\w+ socket) (\d+)", log)
    assert set(map(int, open_fds)) <= {0, 1, 2}, open_fds
