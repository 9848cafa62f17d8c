"""UDP echo from the installed package under the real systemd: off as shipped; turned on by a
reload of echod.service (the unit's capability binds UDP port 7), served by a sandboxed worker of
the dynamic user; and by echod.socket with ListenDatagram= (a drop-in), with no capability."""
import json
import socket

from systest import wait_until
from test_service import CAP_NET_BIND_SERVICE, caps, set_key

CONF = "/etc/echod/echod.conf"


def udp_roundtrip(host, payload, port=7, timeout=5):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, (host, port))
        data, peer = s.recvfrom(65536)
        return data, peer[:2]


def udp_port_bound(c, port=7):
    return f":{port} " in c.sh(f"ss -Hlun 'sport = :{port}'", check=False).stdout


def test_udp_is_off_as_shipped_and_a_reload_turns_it_on(service):
    c = service
    assert not udp_port_bound(c)
    report = json.loads(c.sh("echod status --json").stdout)
    assert report["udp"]["listeners"] == []

    set_key(c, "listen_udp", '{"127.0.0.1:7"}')
    cursor = c.cursor()
    c.sh("systemctl reload echod")
    wait_until("the reload", lambda: "reloaded configuration" in c.messages(cursor), 20)
    assert "listening on UDP 127.0.0.1:7" in c.messages(cursor)
    data, peer = udp_roundtrip("127.0.0.1", b"udp through the package")
    assert data == b"udp through the package" and peer == ("127.0.0.1", 7)

    # the worker: the service's dynamic user, no capability left, sandboxed
    main_pid = c.show("echod.service", "MainPID")
    report = json.loads(c.sh("echod status --json").stdout)
    worker = report["udp"]["listeners"][0]["worker_pid"]
    assert worker > 0
    st = c.proc_status(worker)
    master = c.proc_status(int(main_pid))
    assert st["Uid"] == master["Uid"]
    assert caps(st, "CapEff") == 0 and caps(st, "CapPrm") == 0 and caps(st, "CapAmb") == 0
    assert caps(master, "CapEff") & CAP_NET_BIND_SERVICE
    assert st["Seccomp"].strip() == "2" and st["NoNewPrivs"].strip() == "1"
    assert c.cmdline(worker).startswith("echod: udp 127.0.0.1:7")

    # a reflector port is never answered, and it shows in the journal's summary
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 19))  # chargen's port
        s.sendto(b"loop?", ("127.0.0.1", 7))
        s.settimeout(1)
        try:
            s.recv(100)
            raise AssertionError("echod answered chargen's port")
        except socket.timeout:
            pass
    wait_until("the 10 s summary", lambda: "UDP: 1 datagrams not answered in the last 10 s (reflector-port 1)"
               in c.messages(cursor), 20)


def test_socket_unit_passes_a_datagram_socket(service):
    c = service
    c.sh("systemctl stop echod.service")
    c.sh("mkdir -p /etc/systemd/system/echod.socket.d && printf '[Socket]\\nListenDatagram=127.0.0.1:7\\n' "
         "> /etc/systemd/system/echod.socket.d/udp.conf && systemctl daemon-reload")
    try:
        cursor = c.cursor()
        c.sh("systemctl start echod.socket")
        # the first datagram starts the service, which then answers it from the queue
        data, _ = udp_roundtrip("127.0.0.1", b"activated by a datagram", timeout=20)
        assert data == b"activated by a datagram"
        c.wait_active("echod.service")
        text = c.messages(cursor)
        assert "socket-activated: using 3 socket(s) passed by systemd" in text, text
        assert "listening on UDP 127.0.0.1:7 (socket-activated)" in text, text
    finally:
        c.sh("systemctl stop echod.socket echod.service; rm -rf /etc/systemd/system/echod.socket.d; "
             "systemctl daemon-reload; systemctl start echod.service", check=False)
