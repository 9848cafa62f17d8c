"""Where echod's log goes: structured journald records (native protocol, with fields) when
stderr is the journal, syslog(3) with LOG_PID and facility daemon otherwise. The test owns the
journal and syslog sockets, inside a private mount namespace."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import ECHOD, base_config

HERE = os.path.dirname(os.path.abspath(__file__))


def capture(mode, tmpdir_path, **keys):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to own the log sockets in a mount namespace")
    conf = os.path.join(tmpdir_path, "echod.conf")
    with open(conf, "w") as f:
        f.write(base_config(**keys))
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "/usr/bin/python3",
                          os.path.join(HERE, "log_capture.py"), mode, ECHOD, conf],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads(out.stdout)


def test_journal_structured_connection_record(tmpdir_path):
    r = capture("journal", tmpdir_path)
    assert r["payload_ok"] and r["rc"] == 0
    records = [d for d in r["datagrams"] if d.get("MESSAGE_ID") == "8a3e1c2f6b7d4e09a1c5d2b3f4e6a705"]
    assert len(records) == 1, r["datagrams"]
    rec = records[0]
    assert rec["REMOTE_ADDR"] == "127.0.0.1"
    assert rec["REMOTE_PORT"] == str(r["client_port"])
    assert rec["BYTES_IN"] == "4321" and rec["BYTES_OUT"] == "4321"
    assert rec["EXIT_REASON"] == "clean"
    assert int(rec["DURATION_USEC"]) > 0
    assert int(rec["CHILD_PID"]) not in (0, r["pid"])
    assert rec["PRIORITY"] == "6"
    assert rec["SYSLOG_IDENTIFIER"] == "echod"
    assert rec["MESSAGE"].startswith(f"connection 127.0.0.1:{r['client_port']} closed: clean, 4321 bytes in")
    # lifecycle messages carry stable MESSAGE_IDs too
    ids = {d.get("MESSAGE_ID") for d in r["datagrams"]}
    assert {"8a3e1c2f6b7d4e09a1c5d2b3f4e6a701", "8a3e1c2f6b7d4e09a1c5d2b3f4e6a702",
            "8a3e1c2f6b7d4e09a1c5d2b3f4e6a707"} <= ids


def test_journal_never_logs_payload(tmpdir_path):
    r = capture("journal", tmpdir_path)
    # the payload is random bytes: no field may be longer than a log line needs
    for d in r["datagrams"]:
        assert all(len(v) < 300 for v in d.values()), d


def test_syslog_daemon_facility_with_pid(tmpdir_path):
    r = capture("syslog", tmpdir_path)
    assert r["payload_ok"] and r["rc"] == 0
    lines = [d["RAW"] for d in r["datagrams"]]
    conn = [ln for ln in lines if f"connection 127.0.0.1:{r['client_port']} closed" in ln]
    assert len(conn) == 1, lines
    # <30> = facility daemon (3) * 8 + info (6); "echod[PID]:" from LOG_PID
    assert conn[0].startswith("<30>"), conn[0]
    assert f"echod[{r['pid']}]: " in conn[0]
