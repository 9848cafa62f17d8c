#!/usr/bin/python3
"""The master's CPU per connection refused at capacity, against how many connections it holds.

A refusal must cost the same whether echod holds 10 connections or 10,000: admission reads counts,
it never walks the table. This holds HELD connections (max_connections = HELD), then opens REFUSE
more in waves of WAVE at once (each wave refused: most at once, up to 64 after a 100 ms grace) and
reads the master's CPU time (utime + stime, /proc/PID/stat) before and after. Reports µs of master
CPU per refused connection for each table size and each binary given.

    sudo bench/tools/refusal_cost.py BUILD_DIR [BUILD_DIR ...] [--held 100,10000] [--refuse 20000]

A benchmark, not a test: it asserts nothing about time.
"""
import argparse
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time

HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def start(build, held, d):
    ctl = os.path.join(d, "control")
    conf = os.path.join(d, "echod.conf")
    with open(conf, "w") as f:
        f.write(f'listen = {{"127.0.0.1:0"}}\nuser = "nobody"\ncontrol_socket = "{ctl}"\nlog_connections = false\n'
                f"max_connections = {held}\nmax_per_source = 0\nidle_timeout = 0\n")
    log = open(os.path.join(d, "log"), "w+")
    p = subprocess.Popen([os.path.join(build, "src/echod/echod"), "-D", "-e", "-f", conf], stderr=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log.seek(0)
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read())
        if m:
            return p, int(m.group(1))
        time.sleep(0.05)
    p.kill()
    raise SystemExit(f"echod from {build} did not start")


def hold(port, n):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"x")
        socks.append(s)
    for s in socks:  # every one admitted and echoing
        s.settimeout(30)
        assert s.recv(1) == b"x"
    return socks


def refuse(port, n, wave):
    done = 0
    while done < n:
        batch = [socket.create_connection(("127.0.0.1", port)) for _ in range(min(wave, n - done))]
        for s in batch:
            s.settimeout(30)
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
            s.close()
        done += len(batch)


def measure(build, held, n, wave):
    with tempfile.TemporaryDirectory() as d:
        p, port = start(build, held, d)
        try:
            socks = hold(port, held)
            refuse(port, 200, wave)  # warm up
            c0 = cpu_seconds(p.pid)
            refuse(port, n, wave)
            used = cpu_seconds(p.pid) - c0
            for s in socks:
                s.close()
            return used / n * 1e6
        finally:
            p.terminate()
            p.wait(30)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("builds", nargs="+")
    ap.add_argument("--held", default="100,10000")
    ap.add_argument("--refuse", type=int, default=20000)
    ap.add_argument("--wave", type=int, default=256)
    a = ap.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"host: {cpu}, kernel {platform.release()}; {a.refuse} refusals, {a.wave} at once")
    print(f"{'build':40} " + " ".join(f"{'held ' + h:>14}" for h in a.held.split(",")) + "   (µs master CPU per refusal)")
    for b in a.builds:
        row = [measure(b, int(h), a.refuse, a.wave) for h in a.held.split(",")]
        print(f"{b:40} " + " ".join(f"{v:14.1f}" for v in row))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
