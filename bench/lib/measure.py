"""The TCP measurements: connection rate, round trips and throughput with every server up at once
and the order rotating (timed), then memory per held connection and overload, one server at a
time (untimed)."""
import json
import os
import re
import subprocess
import time

from .common import HOST, log, median_of
from .servers import ECHODS, Server


def echoc_load(bins, port, connections, duration, persistent=False, cpu=None):
    cmd = [bins["echoc"], "--load", "--connections", str(connections), "--duration", str(duration),
           "--size", "64", "--json", "-W", "10", HOST, str(port)]
    if persistent:
        cmd.insert(2, "--persistent")
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=duration + 60)
    end = json.loads(out.stdout).get("end") or {}
    c = end.get("connections", {})
    lat = end.get("latency_ms", {})
    return {
        "rate": c.get("per_second") or 0.0, "ok": c.get("ok", 0),
        "failed": c.get("failed", 0) + c.get("timeouts", 0) + end.get("mismatches", 0), "refused": c.get("refused", 0),
        "rtt_per_s": end.get("round_trips", 0) / max(end.get("seconds", duration), 1e-9),
        "p50_us": (lat.get("p50") or 0) * 1000, "p99_us": (lat.get("p99") or 0) * 1000,
    }


def meminfo_available_kib():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def hold(bins, srv, n):
    srv.wait_idle()
    time.sleep(0.5)
    pss0, avail0 = srv.pss_kib(), meminfo_available_kib()
    p = subprocess.Popen([bins["benchcli"], "hold", HOST, str(srv.port), str(n)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    held = int((p.stdout.readline().split() or ["", "0"])[1])
    time.sleep(1)  # let the last children settle
    pss1, avail1 = srv.pss_kib(), meminfo_available_kib()
    procs = len(srv.tree())
    p.stdin.write("go\n")
    p.stdin.flush()
    m = re.match(r"echoed (\d+) of", p.stdout.readline() or "")
    p.wait(timeout=120)
    srv.wait_idle()
    k = max(held, 1)
    return {"held": held, "echoed": int(m.group(1)) if m else 0, "processes": procs,
            "pss_kib": (pss1 - pss0) / k, "avail_kib": (avail0 - avail1) / k}


def stream(bins, port, size):
    out = subprocess.run([bins["benchcli"], "stream", HOST, str(port), str(size)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, timeout=600)
    if out.returncode != 0:
        return {"mib_s": 0.0, "error": out.stderr.strip()}
    nbytes, secs = out.stdout.split()
    return {"mib_s": int(nbytes) / float(secs) / (1 << 20)}


def overload(bins, srv, capacity, duration):
    """`capacity` persistent clients echo back to back (admitted first), alone and then while 10x
    as many clients open and close connections as fast as they can."""
    alone = echoc_load(bins, srv.port, capacity, duration, persistent=True)
    srv.wait_idle()
    admitted = subprocess.Popen([bins["echoc"], "--load", "--persistent", "--connections", str(capacity),
                                 "--duration", str(duration + 1), "--size", "64", "--json", "-W", "10", HOST,
                                 str(srv.port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(0.5)  # the admitted clients hold their connections before the overload starts
    c = echoc_load(bins, srv.port, 10 * capacity, duration)
    aout, _ = admitted.communicate(timeout=duration + 90)
    end = json.loads(aout).get("end") or {}
    ac, lat = end.get("connections", {}), end.get("latency_ms", {})
    srv.wait_idle()
    return {"alone_p99_us": alone["p99_us"], "under_p50_us": (lat.get("p50") or 0) * 1000,
            "under_p99_us": (lat.get("p99") or 0) * 1000, "alone_rtt_s": alone["rtt_per_s"],
            "under_rtt_s": end.get("round_trips", 0) / max(end.get("seconds") or 1, 1e-9),
            "admitted_failed": ac.get("failed", 0) + ac.get("refused", 0) + ac.get("timeouts", 0) + end.get("mismatches", 0),
            "excess_ok": c["ok"], "excess_refused": c["refused"] + c["failed"]}


def timed(names, args, bins, work):
    """Rate, RTT and throughput, with every server up at once on its own port: each repeat
    measures every server in turn, the order rotating from one repeat to the next, so a drift of
    the shared machine (another VM, a frequency change) lands on all of them alike instead of on
    whichever server was measured in that minute. The figure kept is the median of the repeats."""
    scenarios = [(f"rate{n}", lambda srv, n=n: echoc_load(bins, srv.port, n, args.duration)) for n in args.concurrency]
    scenarios.append(("rtt", lambda srv: echoc_load(bins, srv.port, 1, args.duration, persistent=True)))

    def pinned(srv):
        # client and server on CPU 0: no cross-CPU wakeup (in a VM an IPI that dominates the
        # unpinned figure), so what is left is mostly the server's own work per echo
        srv.pin({0})
        try:
            return echoc_load(bins, srv.port, 1, args.duration, persistent=True, cpu=0)
        finally:
            srv.pin(os.sched_getaffinity(0))
    scenarios.append(("rtt1cpu", pinned))
    scenarios.append(("stream", lambda srv: stream(bins, srv.port, args.stream_bytes)))

    servers, runs = {}, {}
    try:
        for name in names:
            try:
                servers[name] = Server(name, bins, work).start()
            except (RuntimeError, OSError) as e:
                if name == "baseline":
                    raise
                log(f"{name}: FAILED to start: {e}")  # reported as missing, the others still run
        for key, measure in scenarios:
            log(f"{key}: {args.repeat} × {', '.join(servers)}")
            for rep in range(args.repeat):
                order = list(servers)
                order = order[rep % len(order):] + order[:rep % len(order)]
                for name in order:
                    try:
                        runs.setdefault(name, {}).setdefault(key, []).append(measure(servers[name]))
                        if not servers[name].wait_idle(10):
                            # a connection that never ends (ncat after a half-close): start afresh
                            log(f"{name}: {key}: connections left behind, restarting it")
                            servers[name].stop()
                            servers[name] = Server(name, bins, work).start()
                    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as e:
                        if name == "baseline":
                            raise
                        log(f"{name}: {key}: FAILED: {e}")
                        servers.pop(name).stop()
                        runs.pop(name, None)
    finally:
        for srv in servers.values():
            srv.stop()

    results = {}
    for name, r in runs.items():
        res = results[name] = {}
        for n in args.concurrency:
            res[f"rate{n}"] = median_of(r[f"rate{n}"], "rate")
            res[f"rate{n}_failed"] = sum(x["failed"] + x["refused"] for x in r[f"rate{n}"])
        res["p50_us"], res["p99_us"] = median_of(r["rtt"], "p50_us"), median_of(r["rtt"], "p99_us")
        res["p50_1cpu_us"] = median_of(r["rtt1cpu"], "p50_us")
        res["mib_s"] = median_of(r["stream"], "mib_s")
        res["stream_error"] = next((x["error"] for x in r["stream"] if "error" in x), None)
    return results


def untimed(name, res, args, bins, work):
    """Memory and overload, one server at a time (each needs its own limits and a quiet machine)."""
    for n in args.held:
        # echod: max_connections raised to the number held, and max_per_source off (every
        # connection comes from 127.0.0.1); everything else is the shipped default
        over = {"max_connections": max(n, 512), "max_per_source": 0} if n > 64 else {}
        srv = Server(name, bins, work, over).start()
        try:
            res[f"hold{n}"] = hold(bins, srv, n)
        finally:
            srv.stop()
    # overload: echod with max_connections = capacity (max_per_source may not exceed it, and every
    # client is 127.0.0.1, so it is lowered with it); the others as they are
    over = {"max_connections": args.capacity, "max_per_source": args.capacity} if name in ECHODS else {}
    # one 3 s shot is bimodal on this machine (admitted p99 ~0.8 ms or ~3 ms, for every server
    # alike): the median of a few, key by key
    srv = Server(name, bins, work, over).start()
    try:
        runs = [overload(bins, srv, args.capacity, args.duration) for _ in range(args.overload_repeat)]
    finally:
        srv.stop()
    res["overload"] = {k: median_of(runs, k) for k in runs[0]}
    res["overload"]["admitted_failed"] = sum(r["admitted_failed"] for r in runs)  # a median would hide one
    res["overload"]["kept"] = sorted(r["under_rtt_s"] / r["alone_rtt_s"] for r in runs if r["alone_rtt_s"])


