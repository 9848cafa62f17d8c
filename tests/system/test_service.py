"""echod.service and echod.socket under the real systemd of a booted Debian 12, with the
.debs installed by dpkg. The checks of issue 5, in order; each test starts from the
service running on the shipped configuration (the `service` fixture)."""
import json
import os
import re
import shutil
import socket
import subprocess

import pytest

from conftest import have_ipv6_loopback
from systest import ECHOC, ROOT, echo_once, port_in_use, wait_until

CONF = "/etc/echod/echod.conf"
MSG_CONNECTION = "8a3e1c2f6b7d4e09a1c5d2b3f4e6a705"
MSG_RELOADED = "8a3e1c2f6b7d4e09a1c5d2b3f4e6a703"
MSG_RELOAD_FAILED = "8a3e1c2f6b7d4e09a1c5d2b3f4e6a704"
CAP_NET_BIND_SERVICE = 1 << 10


def echoc(*args, input=None, timeout=60):
    return subprocess.run([ECHOC, *args], input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=timeout)


def held_connection(host="127.0.0.1"):
    """A connection that echoed one byte, so the server has admitted it and forked."""
    s = socket.create_connection((host, 7), timeout=10)
    s.sendall(b"x")
    assert s.recv(1) == b"x"
    return s


def refused(host="127.0.0.1"):
    """True if a new connection is closed or reset without any echo."""
    with socket.create_connection((host, 7), timeout=10) as s:
        try:
            s.sendall(b"x")
            return s.recv(1) == b""
        except ConnectionResetError:
            return True


def set_key(c, key, value):
    """Change key in the container's echod.conf: the shipped file sets or shows every key, the
    ones it leaves out (max_per_source) as a commented-out "#key = default", which is uncommented."""
    text = c.read(CONF)
    new, n = re.subn(rf"(?m)^{key}\s*=.*$", f"{key} = {value}", text)
    if n == 0:
        # only when the key is not set: prose such as "# proxy_protocol = true every ..." would
        # otherwise match too
        new, n = re.subn(rf"(?m)^#\s*{key}\s*=.*$", f"{key} = {value}", text)
    assert n == 1, f"{key} not found once in {CONF}"
    c.write(CONF, new)


# 1 -------------------------------------------------------------------------------------------

def test_install_enables_and_starts_the_service_which_echoes_on_ipv4(service):
    c = service
    assert "Setting up echod" in c.install_output, c.install_output
    assert c.sh("systemctl is-enabled echod.service").stdout.strip() == "enabled"
    # the socket unit is the alternative, shipped disabled
    assert c.sh("systemctl is-enabled echod.socket", check=False).stdout.strip() == "disabled"
    assert c.sh("systemctl is-active echod.service").stdout.strip() == "active"
    assert c.show("echod.service", "Type") == "notify"
    status = c.show("echod.service", "StatusText")
    assert "listening on 0.0.0.0:7 [::]:7" in status, status

    data = os.urandom(200_000)
    r = echoc("-4", "127.0.0.1", input=data)
    assert r.returncode == 0 and r.stdout == data, r.stderr


def test_the_service_echoes_on_ipv6(service):
    if not have_ipv6_loopback():
        pytest.skip("no IPv6 loopback (::1) on this host")
    data = os.urandom(200_000)
    r = echoc("-6", "::1", input=data)
    assert r.returncode == 0 and r.stdout == data, r.stderr
    r = echoc("-c", "3", "-i", "0.05", "-J", "::1")
    assert r.returncode == 0, r.stderr
    end = json.loads(r.stdout)["end"]
    assert end["sent"] == end["echoed"] == 3


# 2 -------------------------------------------------------------------------------------------

def test_journal_has_a_per_connection_record_with_peer_and_byte_counts(service):
    c = service
    payload = os.urandom(12345)
    echo, port = echo_once("127.0.0.1", payload)
    assert echo == payload

    def record():
        for rec in c.records(message_id=MSG_CONNECTION):
            if rec.get("REMOTE_PORT") == str(port):
                return rec
        return None

    rec = wait_until("the connection's journal record", record, 15, interval=0.1)
    assert rec["REMOTE_ADDR"] == "127.0.0.1"
    assert rec["BYTES_IN"] == rec["BYTES_OUT"] == "12345"
    assert rec["EXIT_REASON"] == "clean"
    assert int(rec["DURATION_USEC"]) > 0
    assert int(rec["CHILD_PID"]) > 0
    assert rec["_SYSTEMD_UNIT"] == "echod.service"
    assert rec["_PID"] == c.show("echod.service", "MainPID")  # the master writes it


# 3 -------------------------------------------------------------------------------------------

def test_reload_applies_a_new_limit_without_failing_a_connection(service):
    c = service
    main_pid = c.show("echod.service", "MainPID")
    assert "of 512 connections" in c.cmdline(main_pid)

    # traffic across the reload: connections held throughout, and new ones all along
    loads = [subprocess.Popen([ECHOC, "--load", "--persistent", "--connections", "2", "--duration", "4",
                               "-J", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE),
             # paced: unthrottled churn (~1000/s) could briefly fill the new limit of 8 with
             # children still exiting, which would be a correct refusal, not a reload failure
             subprocess.Popen([ECHOC, "--load", "--connections", "2", "--rate", "200", "--duration", "4",
                               "-J", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)]
    try:
        wait_until("the load to be served", lambda: len(c.children(main_pid)) >= 2, 10)
        set_key(c, "max_per_source", 0)  # no per-source limit: only max_connections refuses
        set_key(c, "max_connections", 8)
        cursor = c.cursor()
        c.sh("systemctl reload echod")
        wait_until("the 'reloaded' journal record",
                   lambda: c.records(cursor, message_id=MSG_RELOADED), 15,
                   interval=0.1)
        results = [p.communicate(timeout=30) for p in loads]
    finally:
        for p in loads:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(loads, results):
        assert p.returncode == 0, err
        end = json.loads(out)["end"]
        conns = end["connections"]
        assert conns["ok"] > 0 and end["round_trips"] > 0, end
        assert conns["refused"] == conns["failed"] == conns["timeouts"] == end["mismatches"] == 0, end

    assert c.show("echod.service", "MainPID") == main_pid
    assert "of 8 connections" in c.cmdline(main_pid)
    held = []
    try:
        # the master may still be reaping the load's last children
        for _ in range(8):
            held.append(held_connection())
        assert refused(), "a 9th connection was served with max_connections = 8"
    finally:
        for s in held:
            s.close()


# 4 -------------------------------------------------------------------------------------------

def test_invalid_config_keeps_the_old_one_on_reload_and_fails_a_start_without_restarts(service):
    c = service
    main_pid = c.show("echod.service", "MainPID")
    lines = c.read(CONF).count("\n")
    c.sh(f"echo 'max_connections = lots' >> {CONF}")
    bad_line = lines + 1

    cursor = c.cursor()
    c.sh("systemctl reload echod")
    msg = wait_until("the 'reload failed' journal record",
                     lambda: c.records(cursor, message_id=MSG_RELOAD_FAILED), 15,
                     interval=0.1)[0]["MESSAGE"]
    assert f"{CONF}:{bad_line}:" in msg, msg
    assert "keeping the old configuration" in msg, msg
    assert c.sh("systemctl is-active echod").stdout.strip() == "active"
    assert c.show("echod.service", "MainPID") == main_pid
    assert echo_once("127.0.0.1", b"still here")[0] == b"still here"

    # a (re)start with the invalid file fails at ExecStartPre, naming the line, and is not
    # retried: right after the failure the unit is 'failed', not 'activating' (auto-restart)
    cursor = c.cursor()
    r = c.sh("systemctl restart echod", check=False)
    assert r.returncode != 0
    assert c.show("echod.service", "ActiveState") == "failed"
    assert c.show("echod.service", "NRestarts") == "0"
    text = c.messages(cursor)
    assert f"{CONF}:{bad_line}:" in text, text


# 5 -------------------------------------------------------------------------------------------

def test_stop_drains_cleanly_then_the_socket_unit_activates_the_service(service):
    c = service
    s = held_connection()
    payload = os.urandom(50_000)
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        got += s.recv(65536)
    assert got == payload

    stop = c.popen("systemctl stop echod")
    try:
        # draining: the connection gets a clean FIN (EOF), not a reset, and then we close
        s.settimeout(20)
        assert s.recv(1) == b""
        s.close()
        out, _ = stop.communicate(timeout=30)
    finally:
        if stop.poll() is None:
            stop.kill()
            stop.wait()
    assert stop.returncode == 0, out
    assert c.show("echod.service", "ActiveState") == "inactive"
    assert c.show("echod.service", "Result") == "success"
    assert c.show("echod.service", "ExecMainStatus") == "0"
    assert not port_in_use(7)  # the container shares the host's network

    cursor = c.cursor()
    c.sh("systemctl start echod.socket")
    assert c.sh("systemctl is-active echod.service", check=False).stdout.strip() == "inactive"
    data = os.urandom(100_000)
    r = echoc("-4", "127.0.0.1", input=data)
    assert r.returncode == 0 and r.stdout == data, r.stderr
    c.wait_active("echod.service")
    text = c.messages(cursor)
    assert "socket-activated: using 2 socket(s) passed by systemd" in text, text
    if have_ipv6_loopback():
        r = echoc("-6", "::1", input=data)
        assert r.returncode == 0 and r.stdout == data, r.stderr


# 6 -------------------------------------------------------------------------------------------

def caps(status, field):
    return int(status[field].strip(), 16)


def test_master_and_child_run_unprivileged_with_only_the_units_capability(service):
    c = service
    main_pid = c.show("echod.service", "MainPID")
    s = held_connection()
    try:
        kids = wait_until("the connection's child", lambda: c.children(main_pid), 10)
        assert len(kids) == 1, kids
        child = kids[0]
        assert c.cmdline(child).startswith("echod: 127.0.0.1:"), c.cmdline(child)
        spawner = c.spawner(main_pid)
        assert spawner and c.cmdline(spawner).startswith("echod: spawner"), spawner
        for pid in (main_pid, spawner, child):
            st = c.proc_status(pid)
            uids = [int(x) for x in st["Uid"].split()]
            gids = [int(x) for x in st["Gid"].split()]
            # DynamicUser=yes: one transient uid (61184-65519) for real, effective, saved, fs
            assert len(set(uids)) == 1 and 61184 <= uids[0] <= 65519, st["Uid"]
            assert len(set(gids)) == 1 and gids[0] != 0, st["Gid"]
            assert set(st["Groups"].split()) <= {str(gids[0])}, st["Groups"]  # no other group
            assert caps(st, "CapBnd") == CAP_NET_BIND_SERVICE, st["CapBnd"]
            for field in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
                assert caps(st, field) & ~CAP_NET_BIND_SERVICE == 0, (pid, field, st[field])
            assert st["NoNewPrivs"].strip() == "1"
            assert st["Seccomp"].strip() == "2"  # SystemCallFilter= is in force
    finally:
        s.close()


def header_define(path, name):
    with open(os.path.join(ROOT, path)) as f:
        return int(re.search(rf"^#define {name} (\d+)", f.read(), re.M).group(1))


def test_unit_limits_fit_the_largest_max_connections(service):
    """TasksMax and LimitNPROC fit the largest max_connections with echod's own processes;
    LimitNOFILE the master's sockets for all of them, its listeners and the waiting connections.
    LimitNPROC matters: left out, it is half of kernel.threads-max (96367 on a 24 GiB host), and the
    dynamic user's forks fail above it."""
    c = service
    most = header_define("src/echod/config.h", "CONFIG_MAX_CONNECTIONS")
    own = header_define("src/echod/config.h", "CONFIG_NOFILE_OWN")
    listen = header_define("src/echod/config.h", "CONFIG_MAX_LISTEN")
    processes = most + 2 + 1 + 1 + 64 + 1  # master, spawner(s), kill, UDP spawner and workers
    assert int(c.show("echod.service", "TasksMax")) >= processes
    assert int(c.show("echod.service", "LimitNPROC")) >= processes
    assert int(c.show("echod.service", "LimitNOFILE")) >= most + 4 * listen + own + 1024 + 65535
    # the master's own: soft = hard (systemd sets both; where the container's own hard limit is
    # lower, systemd sets the closest it can, and echod raises its soft limit to the hard one)
    limits = c.read(f"/proc/{c.show('echod.service', 'MainPID')}/limits")
    nofile = re.search(r"^Max open files\s+(\d+)\s+(\d+)", limits, re.M)
    assert nofile and nofile.group(1) == nofile.group(2), limits


def test_echod_status_answers_on_the_control_socket_in_the_runtime_directory(service):
    c = service
    main_pid = c.show("echod.service", "MainPID")
    s = held_connection()
    try:
        report = json.loads(c.sh("echod status --json").stdout)
        assert report["pid"] == int(main_pid)
        assert sorted((l["address"], l["port"], l["socket"]) for l in report["listeners"]) == \
            [("0.0.0.0", 7, "bound"), ("::", 7, "bound")]
        local = "127.0.0.1:%d" % s.getsockname()[1]
        assert local in [conn["peer"] for conn in report["connections"]], report["connections"]
        text = c.sh("echod status").stdout
        assert local in text, text
    finally:
        s.close()
    # owned by the service's dynamic user, accessible to it (and root) only
    st = c.sh("stat -c '%U %a' /run/echod/control").stdout.split()
    assert st[1] == "600" and st[0] != "root", st


def test_installed_units_verify_clean_and_score_at_most_2_0(service):
    c = service
    r = c.sh("systemd-analyze verify --man=no echod.service echod.socket 2>&1", check=False)
    assert r.returncode == 0 and r.stdout == "", r.stdout
    r = c.sh("systemd-analyze security --offline=yes --threshold=20 --no-pager "
             "/lib/systemd/system/echod.service 2>&1", check=False)
    m = re.search(r"Overall exposure level for echod.service: (\d+\.\d+)", r.stdout)
    assert m, r.stdout
    assert r.returncode == 0 and float(m.group(1)) <= 2.0, r.stdout[-2000:]


# 7 -------------------------------------------------------------------------------------------

def test_local_conffile_edit_survives_reinstall_and_upgrade_and_purge_removes_it(service, upgrade_packages):
    c = service
    set_key(c, "max_per_source", 3)
    c.sh(f"echo '# local edit' >> {CONF}")
    edited = c.read(CONF)

    # the same version again
    c.sh("dpkg -i /root/debs/echod_0.1.0_amd64.deb", timeout=120)
    assert c.read(CONF) == edited
    c.wait_active("echod.service")

    # an upgrade: the service is restarted and keeps the edit
    before = c.show("echod.service", "MainPID")
    shutil.copy(upgrade_packages["debs"]["echod"], os.path.join(c.dir, "root", "debs", "upgrade.deb"))
    c.sh("dpkg -i /root/debs/upgrade.deb", timeout=120)
    assert c.sh("dpkg-query -W -f '${Version}' echod").stdout == "0.1.0+systest1"
    assert c.read(CONF) == edited
    c.wait_active("echod.service")
    assert c.show("echod.service", "MainPID") != before
    assert echo_once("127.0.0.1", b"upgraded")[0] == b"upgraded"

    # purge: stopped, disabled, and the conffile and its directory are gone
    c.sh("dpkg --purge echod", timeout=120)
    assert c.sh(f"test -e {CONF}", check=False).returncode != 0
    assert c.sh("test -e /etc/echod", check=False).returncode != 0
    assert c.sh("test -e /etc/systemd/system/multi-user.target.wants/echod.service",
                check=False).returncode != 0
    assert c.sh("systemctl is-active echod.service", check=False).stdout.strip() != "active"
    with pytest.raises(ConnectionRefusedError):
        echo_once("127.0.0.1", b"gone", timeout=5)

    # a fresh install brings back the shipped file, enabled and running
    c.sh("dpkg -i /root/debs/echod_0.1.0_amd64.deb", timeout=120)
    assert c.read(CONF) == c.pristine_conf
    c.wait_active("echod.service")
    assert echo_once("127.0.0.1", b"back")[0] == b"back"
