"""Echo correctness of the real echod on loopback, with our client and independent ones."""
import concurrent.futures
import hashlib
import os
import shutil
import socket
import subprocess

import pytest

from conftest import connect, echo_roundtrip, free_port


@pytest.mark.parametrize("size", [0, 1, 64 * 1024, 64 * 1024 * 1024], ids=["0B", "1B", "64KiB", "64MiB"])
def test_echo_sizes_sha256(echod, size):
    data = os.urandom(size)
    with connect(echod.endpoint()) as s:
        got = echo_roundtrip(s, data)
    assert len(got) == size
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    # one record per connection, with the byte counts
    echod.wait_log(rf"closed: clean, {size} bytes in, {size} bytes out")


def test_half_close_echoes_pending_then_fin(echod):
    """After our FIN the server still sends everything, then its own FIN (EOF, not a reset)."""
    data = os.urandom(3 * 1024 * 1024)
    with connect(echod.endpoint()) as s:
        s.sendall(data)           # no reading yet: the echo piles up in the buffers
        s.shutdown(socket.SHUT_WR)
        got = bytearray()
        while True:
            b = s.recv(1 << 20)   # raises ConnectionResetError on an RST
            if not b:
                break
            got += b
    assert bytes(got) == data


def test_counts_exact_while_peer_still_reading(echod):
    """A child that exits with its echo still in flight: the record counts every byte anyway (the
    peer's ACKs keep arriving while the master reads the socket's counters)."""
    data = os.urandom(4 * 1024 * 1024)
    rounds = 30
    for _ in range(rounds):
        with connect(echod.endpoint()) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            n = 0
            while True:
                b = s.recv(1 << 20)
                if not b:
                    break
                n += len(b)
        assert n == len(data)
    echod.wait_log(rf"closed: clean, {len(data)} bytes in, {len(data)} bytes out", count=rounds, timeout=5)


def test_byte_at_a_time(echod):
    with connect(echod.endpoint()) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for b in b"slowloris\x00\xff":
            s.send(bytes([b]))
            assert s.recv(1) == bytes([b])


def test_ipv6_and_ipv4_listeners(echod_factory):
    e = echod_factory(listen='"127.0.0.1:0", "[::1]:0"')
    for fam in (socket.AF_INET, socket.AF_INET6):
        with connect(e.endpoint(fam)) as s:
            assert echo_roundtrip(s, b"family %d" % fam) == b"family %d" % fam
    assert any(a.startswith("[::1]:") for a in e.addresses)


def test_wildcard_listens_on_both_families(echod_factory):
    # "*:0" would pick two different ephemeral ports; use a concrete free port
    port = free_port()
    e = echod_factory(listen=f'"*:{port}"')
    assert e.addresses == [f"0.0.0.0:{port}", f"[::]:{port}"]
    for host in ("127.0.0.1", "::1"):
        with connect((host, port)) as s:
            assert echo_roundtrip(s, b"x" * 1000) == b"x" * 1000


def test_200_concurrent_clients(echod_factory):
    e = echod_factory(max_connections=300, max_per_source=0)
    payloads = [os.urandom(64 * 1024 + i) for i in range(200)]
    socks = [connect(e.endpoint()) for _ in payloads]  # all 200 open at once

    def run(i):
        return echo_roundtrip(socks[i], payloads[i]) == payloads[i]

    with concurrent.futures.ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(run, range(200)))
    for s in socks:
        s.close()
    assert all(results)
    e.wait_log(r"closed: clean", count=200)
    assert "refused" not in e.log()


def test_socat_client(echod):
    if not shutil.which("socat"):
        pytest.skip("socat is not installed")
    data = os.urandom(1024 * 1024)
    host, port = echod.endpoint()
    out = subprocess.run(["socat", "-t", "5", "-", f"TCP:{host}:{port}"], input=data,
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == data


def test_ncat_client(echod):
    if not shutil.which("ncat"):
        pytest.skip("ncat is not installed")
    data = os.urandom(256 * 1024)
    host, port = echod.endpoint()
    out = subprocess.run(["ncat", host, str(port)], input=data,
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == data


def test_python_text_lines(echod):
    with connect(echod.endpoint()) as s:
        f = s.makefile("rwb")
        for line in [b"hello\n", b"world\r\n", "h\u00e9llo\n".encode()]:
            f.write(line)
            f.flush()
            assert f.readline() == line


def test_peer_reset_costs_only_its_connection(echod):
    """A client that resets mid-stream ends its own child; others keep echoing."""
    import struct
    good = connect(echod.endpoint())
    bad = connect(echod.endpoint())
    bad.sendall(os.urandom(4 * 1024 * 1024))
    bad.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    bad.close()  # RST
    echod.wait_log(r"closed: (peer-reset|clean|io-error)")
    assert echo_roundtrip(good, b"still here") == b"still here"
    good.close()
    assert echod.proc.poll() is None
