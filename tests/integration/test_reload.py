"""SIGHUP reload: parse, validate, swap only on success; listeners diffed without a closed window;
running connections untouched."""
import socket
import time

from conftest import ContinuousClients, base_config, connect, echo_roundtrip, ping, refused


def test_reload_changes_limit_and_keeps_connections(echod_factory):
    e = echod_factory(max_connections=2, max_per_source=0)
    held = [connect(e.endpoint()) for _ in range(2)]
    for s in held:
        assert ping(s)
    over = connect(e.endpoint())
    assert refused(over)
    over.close()
    port_before = e.port

    e.write_config(base_config(max_connections=4, max_per_source=0))
    e.reload()
    e.wait_log(r"reloaded configuration from ")
    assert e.port == port_before  # the listener was kept, not re-bound
    now = connect(e.endpoint())
    assert ping(now)             # the new limit is in force
    for s in held:               # connections from before the reload are untouched
        assert ping(s, b"x" * 100000)
    for s in held + [now]:
        s.close()


def test_reload_adds_and_removes_listeners(echod_factory):
    e = echod_factory(listen='"127.0.0.1:0"')
    v4 = e.endpoint(socket.AF_INET)
    survivor = connect(v4)
    assert ping(survivor)

    # add [::1]
    e.write_config(base_config(listen='"127.0.0.1:0", "[::1]:0"'))
    e.reload()
    assert e.endpoint(socket.AF_INET) == v4
    v6 = e.endpoint(socket.AF_INET6)
    with connect(v6) as s:
        assert echo_roundtrip(s, b"new listener") == b"new listener"

    # remove 127.0.0.1
    e.write_config(base_config(listen='"[::1]:0"'))
    e.reload()
    e.wait_log(rf"no longer listening on {v4[0]}:{v4[1]}")
    assert e.addresses == [f"[::1]:{v6[1]}"]
    try:
        socket.create_connection(v4, timeout=2).close()
        raise AssertionError("removed listener still accepts")
    except ConnectionRefusedError:
        pass
    # a connection accepted on the removed listener keeps echoing
    assert ping(survivor, b"still here")
    survivor.close()


def test_invalid_reload_keeps_old_config(echod_factory):
    e = echod_factory(max_connections=1, max_per_source=0)
    e.write_config("# broken on purpose\nmax_connections = 5\n\nmax_connections = many\n")
    e.reload()  # READY=1 comes back even when the reload failed
    e.wait_log(rf"Failed to reload, keeping the old configuration: {e.conf_path}:4: "
               r"invalid integer value for option 'max_connections'")
    # still the old limit of 1, still listening on the same port
    a = connect(e.endpoint())
    assert ping(a)
    b = connect(e.endpoint())
    assert refused(b)
    a.close()
    b.close()
    assert e.proc.poll() is None


def test_reload_with_unbindable_address_keeps_old_config(echod_factory):
    e = echod_factory(max_connections=1, max_per_source=0)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    busy = blocker.getsockname()[1]
    e.write_config(base_config(listen=f'"127.0.0.1:0", "127.0.0.1:{busy}"', max_connections=5, max_per_source=0))
    e.reload()
    e.wait_log(rf"keeping the old configuration: cannot listen on 127\.0\.0\.1:{busy}: Address already in use")
    a = connect(e.endpoint())
    assert ping(a)
    b = connect(e.endpoint())
    assert refused(b)  # max_connections is still 1: nothing of the new file was applied
    for s in (a, b, blocker):
        s.close()


def test_no_refused_connect_during_reloads(echod_factory):
    """Clients connect continuously while we reload back to back for 1.5 s: none fails."""
    e = echod_factory(max_connections=100, max_per_source=0)
    with ContinuousClients(e.endpoint()) as clients:
        reloads = 0
        t0 = time.monotonic()
        while reloads < 10 or time.monotonic() - t0 < 1.5:
            e.write_config(base_config(max_connections=100 + reloads % 50, max_per_source=0))
            e.reload()
            reloads += 1
    assert clients.failed == []
    assert clients.ok > 100
    assert len(e.wait_log(r"reloaded configuration from", count=reloads)) == reloads


def test_a_notify_reader_that_stops_reading_never_stalls_the_master(echod_factory):
    """The NOTIFY_SOCKET queue holds 10 datagrams (net.unix.max_dgram_qlen); sd_notify() would
    block on a full one forever. echod drops STATUS= then and waits at most 1 s for a state
    change, so it goes on serving, reloading and stopping."""
    import signal
    e = echod_factory()
    # from here on nobody reads the notify socket; each reload sends RELOADING=1 and READY=1
    for i in range(1, 9):
        e.proc.send_signal(signal.SIGHUP)
        e.wait_log(r"reloaded configuration from", count=i, timeout=10)
    with connect(e.endpoint(), timeout=5) as s:
        assert ping(s, b"still serving")
    t0 = time.monotonic()
    assert e.stop(timeout=10) == 0
    assert time.monotonic() - t0 < 5
    e.notify.drain()  # what did arrive is in order and well formed
    assert any(m.get("RELOADING") == "1" for m in e.notify.messages)
