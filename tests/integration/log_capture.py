#!/usr/bin/python3
"""Run echod with its log going to sockets this script owns, and print what arrived as JSON.

Runs inside a private mount namespace (started by the test with `unshare --mount`), where it
mounts tmpfs over /run (for journald's native socket) and over /dev (for /dev/log,
syslog's socket), so nothing of the host changes.

usage: log_capture.py journal|syslog ECHOD CONFIG
The daemon is driven through one echo connection and a SIGTERM; prints
{"datagrams": [...], "payload_ok": bool}.
"""
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time


def parse_native(data):
    """systemd's native journal protocol: KEY=value lines, or KEY\\n<le64 size><bytes>\\n."""
    fields = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            fields[k.decode()] = v.decode(errors="replace")
            i = nl + 1
        else:
            size = struct.unpack("<Q", data[nl + 1:nl + 9])[0]
            fields[line.decode()] = data[nl + 9:nl + 9 + size].decode(errors="replace")
            i = nl + 9 + size + 1
    return fields


def main():
    mode, echod, config = sys.argv[1:4]
    if mode == "journal":
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)  # private: host untouched
        os.makedirs("/run/systemd/journal")
        path = "/run/systemd/journal/socket"
    else:
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/dev"], check=True)
        os.mknod("/dev/null", 0o666 | 0o020000, os.makedev(1, 3))
        os.chmod("/dev/null", 0o666)
        path = "/dev/log"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    os.chmod(path, 0o666)

    err = tempfile.TemporaryFile()
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET")}
    if mode == "journal":
        st = os.fstat(err.fileno())
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"  # stderr is "the journal"
    proc = subprocess.Popen([echod, "-D", "-f", config], stdin=subprocess.DEVNULL, stdout=err,
                            stderr=err, env=env)
    got = []

    def receive(pred, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(1 << 16)
            except socket.timeout:
                break
            d = parse_native(data) if mode == "journal" else {"RAW": data.decode(errors="replace")}
            got.append(d)
            if pred(d):
                return d
        raise SystemExit(f"timed out; got {got}; stderr {err.seek(0) or err.read()!r}")

    def text(d):
        return d.get("MESSAGE", d.get("RAW", ""))

    ready = receive(lambda d: "listening on 127.0.0.1:" in text(d))
    port = int(text(ready).rsplit(":", 1)[1].split()[0])
    payload = os.urandom(4321)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        back = b""
        while (b := c.recv(65536)):
            back += b
        client_port = c.getsockname()[1]
    receive(lambda d: f"connection 127.0.0.1:{client_port} closed" in text(d))
    proc.send_signal(signal.SIGTERM)
    receive(lambda d: "stopped:" in text(d))
    rc = proc.wait(10)
    print(json.dumps({"datagrams": got, "payload_ok": back == payload, "client_port": client_port,
                      "rc": rc, "pid": proc.pid}))


if __name__ == "__main__":
    main()
