"""Paths, constants and small helpers shared by bench/run's modules."""
import os
import socket
import statistics
import subprocess
import sys

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(BENCH)
HOST = "127.0.0.1"
GiB = 1 << 30


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def median_of(results, key):
    return statistics.median(r[key] for r in results)


def fmt(v, unit=""):
    if v is None:
        return "—"
    if isinstance(v, float) and v < 100:
        return f"{v:.1f}{unit}"
    return f"{v:,.0f}{unit}"


def ratio(v, b):
    """v ÷ b; "—" when either is missing or zero, or b below 2 (a MemAvailable drop of the epoll
    server, which has no process per connection, is noise around 0: the quotient would mean nothing)."""
    return f"{v / b:.2f}×" if v and b and b >= 2 else "—"
