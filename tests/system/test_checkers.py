"""The probes the README's Monitoring section recommends, run against the installed echod.service
from inside the booted Debian 12, from Debian's own packages (installed from the mirror; skipped,
with the reason, when it cannot be reached): check_tcp (monitoring-plugins-basic), blackbox_exporter
(prometheus-blackbox-exporter) and HAProxy's tcp-check (haproxy). Each is checked over IPv4 and
IPv6, then seen to fail once echod refuses the prober, while the connect-only variant of each
still reports success: echod accepts a connection before it decides and closes a refused one.
The command and configuration lines are the README's, verbatim."""
import os
import re
import socket
import urllib.request

import pytest

from conftest import have_ipv6_loopback, skip_on
from systest import ROOT, wait_until

CONF = "/etc/echod/echod.conf"
CHECK_TCP = "check_tcp -H {host} -p 7 -E -s 'check_tcp\\n' -e check_tcp -M crit"
BLACKBOX_MODULE = 'echo: {prober: tcp, tcp: {query_response: [{send: "blackbox"}, {expect: "^blackbox$"}]}}'
HAPROXY_BACKEND = ["option tcp-check", "tcp-check send haproxy-check", "tcp-check expect string haproxy-check"]
HAPROXY_SERVER = "server echo1 192.0.2.7:7 check"
PLUGINS = "/usr/lib/nagios/plugins"


def free_loopback_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        return r.read().decode()


@pytest.fixture(scope="module")
def checkers(container):
    """The three checkers installed in the container, configured as the README says (plus, for
    contrast, the connect-only variants), on free loopback ports of the shared network. Stopped
    afterwards: HAProxy would go on connecting to echod twice a second."""
    c = container
    blackbox_port, stats_port = free_loopback_port(), free_loopback_port()
    c.write("/etc/default/prometheus-blackbox-exporter",
            f'ARGS="--config.file /etc/prometheus/blackbox.yml --web.listen-address=127.0.0.1:{blackbox_port}"\n')
    c.sh("mkdir -p /etc/prometheus /etc/haproxy")
    c.write("/etc/prometheus/blackbox.yml", f"modules:\n  {BLACKBOX_MODULE}\n  connect: {{prober: tcp}}\n")
    backend = "".join(f"    {line}\n" for line in HAPROXY_BACKEND)
    c.write("/etc/haproxy/haproxy.cfg", f"""defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    timeout check 2s
backend echod
{backend}    server echo4 127.0.0.1:7 check inter 500ms fall 2 rise 2
    server echo6 [::1]:7 check inter 500ms fall 2 rise 2
backend echod_connect_only
    server echo4 127.0.0.1:7 check inter 500ms fall 2 rise 2
listen stats
    mode http
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats
""")
    try:
        skip_on(c.apt_install, ["monitoring-plugins-basic", "prometheus-blackbox-exporter", "haproxy"])
        c.sh("systemctl restart prometheus-blackbox-exporter.service haproxy.service")
        blackbox = f"http://127.0.0.1:{blackbox_port}"
        wait_until("blackbox_exporter to answer", lambda: get(f"{blackbox}/metrics"), 30, interval=0.2)
        stats = f"http://127.0.0.1:{stats_port}/stats;csv"
        wait_until("HAProxy's statistics to answer", lambda: get(stats), 30, interval=0.2)
        yield {"blackbox": blackbox, "stats": stats}
    finally:
        c.sh("systemctl stop haproxy.service prometheus-blackbox-exporter.service", check=False)


def check_tcp(c, host, args=None):
    cmd = CHECK_TCP.format(host=host) if args is None else f"check_tcp {args}"
    return c.sh(f"{PLUGINS}/{cmd}", check=False)


def probe(checkers, module, target):
    """probe_success of one blackbox_exporter probe."""
    out = get(f"{checkers['blackbox']}/probe?module={module}&target={target}")
    m = re.search(r"^probe_success (\S+)$", out, re.M)
    assert m, out
    return float(m.group(1))


def haproxy_servers(checkers):
    """{(backend, server): (status, check_status)} from HAProxy's statistics."""
    lines = get(checkers["stats"]).splitlines()
    head = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(head, line.split(","))) for line in lines[1:] if line]
    return {(r["pxname"], r["svname"]): (r["status"], r["check_status"]) for r in rows
            if r["svname"] not in ("FRONTEND", "BACKEND")}


def hosts():
    return ["127.0.0.1", "::1"] if have_ipv6_loopback() else ["127.0.0.1"]


def test_readme_shows_the_tested_lines():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert CHECK_TCP.format(host="echo.example.net") in readme
    assert f"`{BLACKBOX_MODULE}`" in readme
    for line in HAPROXY_BACKEND + [HAPROXY_SERVER]:
        assert f"`{line}`" in readme, line


def test_check_tcp_as_documented_verifies_the_echo(service, checkers):
    for host in hosts():
        r = check_tcp(service, host)
        assert r.returncode == 0 and r.stdout.startswith("TCP OK"), (host, r.stdout, r.stderr)


def test_blackbox_query_response_as_documented_verifies_the_echo(service, checkers):
    for host in hosts():
        target = f"[{host}]:7" if ":" in host else f"{host}:7"
        assert probe(checkers, "echo", target) == 1, target


def test_haproxy_tcp_check_as_documented_verifies_the_echo(service, checkers):
    want = {("echod", "echo4"): ("UP", "L7OK")}
    if have_ipv6_loopback():
        want[("echod", "echo6")] = ("UP", "L7OK")

    def passing():
        s = haproxy_servers(checkers)
        assert all(s.get(k) == v for k, v in want.items()), s
        return True

    wait_until("HAProxy's tcp-check to pass", passing, 15, interval=0.2)


def test_documented_checks_fail_when_echod_refuses_while_connect_only_checks_pass(service, checkers):
    c = service
    text = c.read(CONF)
    new, n = re.subn(r"(?m)^deny\s*=.*$", 'deny = {"127.0.0.1/32"}', text)
    assert n == 1
    c.write(CONF, new)
    try:
        c.sh("systemctl restart echod.service")
        c.wait_active("echod.service")
        r = check_tcp(c, "127.0.0.1")
        assert r.returncode == 2, (r.stdout, r.stderr)  # CRITICAL: No data received from host
        r = check_tcp(c, "127.0.0.1", "-H 127.0.0.1 -p 7")
        assert r.returncode == 0 and r.stdout.startswith("TCP OK"), r.stdout
        assert probe(checkers, "echo", "127.0.0.1:7") == 0
        assert probe(checkers, "connect", "127.0.0.1:7") == 1

        def haproxy_sees_it():
            s = haproxy_servers(checkers)
            assert s[("echod", "echo4")][0] == "DOWN" and s[("echod_connect_only", "echo4")] == ("UP", "L4OK"), s
            return True

        wait_until("HAProxy's tcp-check to mark 127.0.0.1:7 down", haproxy_sees_it, 15, interval=0.2)
    finally:
        c.write(CONF, text)
        c.sh("systemctl restart echod.service", check=False)
