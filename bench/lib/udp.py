"""UDP echo (issue 18): echod beside openbsd-inetd, xinetd and socat, in a network namespace.

openbsd-inetd's internal UDP echo answers no datagram from 127.0.0.0/8 (its dg_badinput()
treats a loopback source as spoofed), so the UDP servers and the client all run in a network
namespace this module creates, on an address of its own on that namespace's loopback."""
import json
import os
import re
import signal
import subprocess
import time

from .build import openbsd_inetd
from .common import fmt, log, median_of, ratio, run
from .servers import xinetd_conf

UDP_SERVERS = ["openbsd-inetd", "xinetd", "socat", "echod", "echod-defaults"]
UDP_REFERENCE = "openbsd-inetd"
UDP_HOST = "10.218.0.1"
UDP_WINDOWS = (8, 64)  # datagrams outstanding: 8 is short of saturation, 64 saturates every server here
# echod with every UDP protection on, each limit far above what one client can send, so that
# each check runs on every datagram (buckets taken, ACL matched, size and port checked) but none binds
UDP_PROTECTED = {
    "allow": f'{{"{UDP_HOST.rsplit(".", 2)[0]}.0.0/16"}}', "deny": '{"192.0.2.0/24"}',
    "udp_rate": 10000000, "udp_burst": 10000000, "udp_byte_rate": 10000000000, "udp_byte_burst": 1000000000,
    "udp_budget": 10000000, "udp_byte_budget": 10000000000,
}
UDP_PROTECTED_NOTE = ("`allow = {\"10.218.0.0/16\"}` and `deny = {\"192.0.2.0/24\"}` (the ACL is matched), "
                      "`udp_rate = udp_burst = 10000000` (per source group, /32), `udp_byte_rate = 1e10`, "
                      "`udp_byte_burst = 1e9`, `udp_budget = 1e7`, `udp_byte_budget = 1e10`; `udp_sources = 16384`, "
                      "`udp_max_size = 1472` and `udp_deny_ports = {7, 11, 13, 17, 19, 37, 53, 69, 123}` as shipped")


def echoc_has_udp(echoc):
    try:
        out = subprocess.run([echoc, "--help"], capture_output=True, text=True, timeout=10)
    except OSError:
        return False
    return "--udp" in out.stdout + out.stderr


class NetNS:
    """A network namespace of our own with UDP_HOST on its loopback; removed on exit."""

    def __init__(self):
        self.name = f"echod-bench-{os.getpid()}"

    def __enter__(self):
        run(["ip", "netns", "add", self.name])
        try:
            run(["ip", "-n", self.name, "link", "set", "lo", "up"])
            run(["ip", "-n", self.name, "addr", "add", f"{UDP_HOST}/32", "dev", "lo"])
        except subprocess.CalledProcessError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        subprocess.run(["ip", "netns", "del", self.name], stderr=subprocess.DEVNULL)

    def wrap(self, cmd):
        return ["ip", "netns", "exec", self.name] + cmd


class UdpServer:
    """One UDP echo server in the namespace, in its own session (stopped with its whole tree)."""

    def __init__(self, name, bins, work, ns, port):
        self.name, self.bins, self.work, self.ns = name, bins, work, ns
        self.port = 7 if name == "openbsd-inetd" else port  # inetd's internal services take their port from /etc/services
        self.proc = None

    def command(self):
        p, w = str(self.port), self.work
        if self.name == "openbsd-inetd":
            conf = os.path.join(w, "inetd-udp.conf")
            open(conf, "w").write(f"{UDP_HOST}:echo dgram udp4 wait root internal\n")
            return [self.bins["inetd"], "-i", conf]  # -i: stay in the foreground; its -R limit never stopped the internal UDP echo
        if self.name == "xinetd":
            conf = os.path.join(w, f"xinetd-udp-{p}.conf")
            open(conf, "w").write(xinetd_conf("udp", UDP_HOST, p, os.path.join(w, "xinetd-udp.log")))
            return ["xinetd", "-dontfork", "-f", conf, "-pidfile", os.path.join(w, f"xinetd-udp-{p}.pid")]
        if self.name == "socat":
            # a child per client address, echoing over a socket connected to it; -T 10 ends it
            # after 10 s idle (without it every client address would keep a process forever)
            return ["socat", "-T", "10", f"UDP4-LISTEN:{p},bind={UDP_HOST},fork,reuseaddr", "PIPE"]
        if self.name in ("echod", "echod-defaults"):
            conf = os.path.join(w, f"echod-udp-{p}.conf")
            text = open(self.bins["echod_conf"]).read()
            over = {"listen": f'{{"{UDP_HOST}:{p}"}}', "listen_udp": f'{{"{UDP_HOST}:{p}"}}',
                    "pidfile": f'"{w}/echod-udp-{p}.pid"', "control_socket": f'"{w}/echod-udp-{p}.control"'}
            if self.name == "echod":
                over.update(UDP_PROTECTED)
            for key, value in over.items():
                text, n = re.subn(rf"(?m)^{key} *=.*$", f"{key} = {value}", text)
                if n == 0:
                    text += f"{key} = {value}\n"
            open(conf, "w").write(text)
            return [self.bins["echod"], "-D", "-e", "-f", conf]
        raise ValueError(self.name)

    def start(self):
        logf = open(os.path.join(self.work, f"udp-{self.name}-{self.port}.log"), "w")
        self.proc = subprocess.Popen(self.ns.wrap(self.command()), stdin=subprocess.DEVNULL, stdout=logf,
                                     stderr=logf, start_new_session=True)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at startup, see {logf.name}: " + open(logf.name).read()[-300:])
            try:
                r = subprocess.run(self.ns.wrap([self.bins["echoc"], "--udp", "-c", "1", "-W", "0.3", "-q", UDP_HOST,
                                                 str(self.port)]), capture_output=True, timeout=5)
                if r.returncode == 0:
                    return self
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not echo UDP on {UDP_HOST}:{self.port}: " + open(logf.name).read()[-500:])

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def cpu_seconds(self):
        """CPU time (user + system) of every live process of the server's session: the server and
        whatever it forked (echod's spawners and UDP worker, socat's child per client)."""
        total = 0
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    f = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
                    if int(f[3]) == self.proc.pid:  # the session
                        total += int(f[11]) + int(f[12])
                except (OSError, IndexError, ValueError):
                    pass
        return total / os.sysconf("SC_CLK_TCK")


def udp_load(bins, srv, duration, window):
    """A load, and the server's CPU time per datagram it answered (what bounds its capacity, whatever
    the client can offer on a shared host)."""
    before = srv.cpu_seconds()
    r = echoc_udp(bins, srv.ns, srv.port, "load", duration=duration, window=window)
    r["cpu_us"] = (srv.cpu_seconds() - before) * 1e6 / r["received"] if r["received"] else 0.0
    return r


def echoc_udp(bins, ns, port, mode, duration=None, window=None, count=None, interval=None):
    """One echoc --udp run (every reply verified byte for byte by echoc); its "end" object."""
    cmd = [bins["echoc"], "--udp", "--json", "--size", "64"]
    if mode == "load":
        cmd += ["--load", "--duration", str(duration), "--window", str(window)]
        limit = duration + 30
    else:
        # -w: a deadline of its own (the first echoc --udp never ended -c N when its last probe was lost)
        cmd += ["-c", str(count), "-i", str(interval), "-w", str(int(count * interval) + 2), "-q"]
        limit = count * interval + 30
    out = subprocess.run(ns.wrap(cmd + [UDP_HOST, str(port)]), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True, timeout=limit)  # exit 1 on any loss: the report says how much
    end = json.loads(out.stdout).get("end") or {}
    rtt = end.get("rtt_ms") or {}
    return {"pps": end.get("received_per_second") or 0.0, "sent_pps": end.get("sent_per_second") or 0.0,
            "sent": end.get("sent", 0), "received": end.get("received", 0), "loss": end.get("loss_percent") or 0.0,
            "bad": end.get("corrupted", 0) + end.get("stray", 0) + end.get("duplicates", 0),
            "p50_us": (rtt.get("p50") or 0) * 1000, "p99_us": (rtt.get("p99") or 0) * 1000}


def udp_timed(names, args, bins, work):
    """Every UDP server up at once in one namespace; each repeat measures each in turn, the order
    rotating; per server and repeat: a load at each window, then a ping at low load."""
    scenarios = [(f"w{w}", lambda srv, w=w: udp_load(bins, srv, args.udp_duration, w)) for w in UDP_WINDOWS]
    scenarios.append(("ping", lambda srv: echoc_udp(bins, srv.ns, srv.port, "ping", count=args.udp_pings, interval=0.005)))
    servers, runs = {}, {}
    with NetNS() as ns:
        try:
            for k, name in enumerate(names):
                try:
                    servers[name] = UdpServer(name, bins, work, ns, 7001 + k).start()
                except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                    log(f"udp: {name}: FAILED to start: {e}")  # reported as missing, the others still run
            log(f"udp: {args.udp_repeat} × {', '.join(servers)}")
            for rep in range(args.udp_repeat):
                order = list(servers)
                order = order[rep % len(order):] + order[:rep % len(order)]
                for name in order:
                    for key, measure in scenarios:
                        runs.setdefault(name, {}).setdefault(key, [])
                        try:
                            runs[name][key].append(measure(servers[name]))
                        except (OSError, ValueError, subprocess.SubprocessError) as e:
                            log(f"udp: {name}: {key}: FAILED: {e}")
        finally:
            for srv in servers.values():
                srv.stop()
    results = {}
    for name, r in runs.items():
        res = results[name] = {}
        for key, vals in r.items():
            if not vals:
                continue
            for field in vals[0]:
                res[f"{key}_{field}"] = median_of(vals, field)
            res[f"{key}_bad"] = sum(v["bad"] for v in vals)  # corrupted, stray or duplicated: any is a failure
    return results


def udp_report(args, info, udp):
    """The UDP section of RESULTS.md."""
    if udp.get("skipped"):
        return f"## UDP echo\n\nNot measured in this run: {udp['skipped']}.\n"
    res = udp["results"]
    servers = [s for s in UDP_SERVERS if s in res]
    ref = res.get(UDP_REFERENCE, {})
    rows = []
    for w in UDP_WINDOWS:
        rows.append((f"datagrams/s answered, window {w}", f"w{w}_pps", "higher", True))
    w = max(UDP_WINDOWS)
    rows.append((f"datagrams/s sent (offered), window {w}", f"w{w}_sent_pps", "", False))
    rows.append((f"loss, window {w} (%)", f"w{w}_loss", "lower", False))
    rows.append((f"server CPU per datagram answered, window {w} (µs)", f"w{w}_cpu_us", "lower", True))
    rows.append((f"RTT p50 under load, window {w} (µs)", f"w{w}_p50_us", "lower", True))
    rows.append((f"RTT p99 under load, window {w} (µs)", f"w{w}_p99_us", "lower", True))
    rows.append((f"RTT p50, {args.udp_pings} pings 5 ms apart (µs)", "ping_p50_us", "lower", True))
    rows.append((f"RTT p99, {args.udp_pings} pings 5 ms apart (µs)", "ping_p99_us", "lower", True))
    rows.append((f"loss, {args.udp_pings} pings 5 ms apart (%)", "ping_loss", "lower", False))
    others = [s for s in servers if s != UDP_REFERENCE]
    out = ["| measure | better | " + " | ".join(servers) + " | " + " | ".join(f"{s}/{UDP_REFERENCE}" for s in others) + " |",
           "|---|---|" + "---:|" * (len(servers) + len(others))]
    for label, key, better, has_ratio in rows:
        cells = [fmt(res[s].get(key)) for s in servers]
        cells += [ratio(res[s].get(key), ref.get(key)) if has_ratio else "" for s in others]
        out.append(f"| {label} | {better} | " + " | ".join(cells) + " |")
    target = []
    e = res.get("echod", {})
    key = f"w{max(UDP_WINDOWS)}_pps"
    if e.get(key) and ref.get(key):
        r = e[key] / ref[key]
        target = ["| target (echod, every protection on) | measured | |", "|---|---|---|",
                  f"| datagrams/s answered ≥ 2× openbsd-inetd (window {max(UDP_WINDOWS)}) | {r:.2f}× "
                  f"| {'**met**' if r >= 2 else '**NOT met**'} |"]
        ck = f"w{max(UDP_WINDOWS)}_cpu_us"
        if e.get(ck) and ref.get(ck):
            c = e[ck] / ref[ck]
            target.append(f"| (beside it: server CPU per datagram answered, window {max(UDP_WINDOWS)}, ≤ 0.5× "
                          f"openbsd-inetd's, i.e. twice the capacity whatever the client offers) | {c:.2f}× | "
                          f"{'met' if c <= 0.5 else 'not met'} |")
    what = {f"w{w}": f"load at window {w}" for w in UDP_WINDOWS} | {"ping": "pings"}
    bad = [f"- {s}: {what.get(k[:-4], k[:-4])}: {res[s][k]:,.0f} replies corrupted, stray or duplicated, "
           f"{args.udp_repeat} repeat(s) together" for s in servers for k in res[s] if k.endswith("_bad") and res[s][k]]
    missing = [s for s in udp["servers"] if s not in res]
    i = info
    md = f"""## UDP echo

Generated by `bench/run{' --quick' if args.quick else ''}{' --udp' if args.udp_only else ''}` on {i['date']}.
Host: {i['nproc']} CPUs ({i['cpu']}), Linux {i['kernel']}; {i.get('fork_us', 0):.0f} µs per fork + exit + reap of a tiny static process (`bench/tools/forkcost.c`).
echod: `{udp.get('echod', '?')}`; client: `echoc --udp` (`{udp['echoc']}`), 64-byte datagrams, every reply checked byte for byte. All servers are up together in one
network namespace created for the run, on {UDP_HOST} (its loopback: openbsd-inetd answers nothing from 127.0.0.0/8); each repeat
measures each server in turn, the order rotating; every figure is the median of {args.udp_repeat} repeat(s). A repeat is, per server,
`echoc --udp --load --duration {args.udp_duration} --window W` for W = {', '.join(map(str, UDP_WINDOWS))} (datagrams outstanding, no rate cap), then
`echoc --udp -c {args.udp_pings} -i 0.005`. Ratios are server ÷ {UDP_REFERENCE}; "better" says which direction is good.

- **openbsd-inetd** {udp.get('inetd_version', '')}: `{UDP_HOST}:echo dgram udp4 wait root internal`, `inetd -i` (run from its extracted .deb: it conflicts with xinetd)
- **xinetd**: builtin `echo`, `socket_type = dgram`, `wait = yes`, `instances`/`per_source` UNLIMITED, `cps = 1000000 1`
- **socat**: `socat -T 10 UDP4-LISTEN:P,bind=ADDR,fork,reuseaddr PIPE`, the UDP twin of the TCP command above: a child per client address (one here)
- **echod**: `listen_udp` with every UDP protection on, set not to bind on one client: {UDP_PROTECTED_NOTE}
- **echod-defaults**: `listen_udp` with the shipped limits (`udp_rate = 10`/s, `udp_burst = 20` per source, `udp_budget = 1000`/s):
  **this row shows the protection working (about 10 answers/s to one source), not speed**

{chr(10).join(out)}

{chr(10).join(target)}

What bounds each server, measured: bench/FINDINGS.md, "UDP echo: what bounds each server".
"""
    if missing:
        md += "\nNot measured (failed to start): " + ", ".join(missing) + "\n"
    if bad:
        md += "\n" + "\n".join(bad) + "\n"
    return md


def udp_skipped(why):
    log(f"udp: not measured: {why}")
    return {"skipped": why}


def udp_part(args, bins, work):
    """Run the UDP scenario; a dict for udp_report (with "skipped" if it could not run)."""
    if os.geteuid() != 0:
        return udp_skipped("needs root (it creates a network namespace)")
    if not echoc_has_udp(bins["echoc"]):
        return udp_skipped(f"{bins['echoc']} has no --udp (pass --echoc)")
    names = [s for s in args.udp_servers.split(",") if s in UDP_SERVERS]
    info = {"echoc": bins["echoc"], "echod": bins["echod"], "servers": names}
    if "openbsd-inetd" in names:
        try:
            bins["inetd"], info["inetd_version"] = openbsd_inetd(args)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            log(f"udp: openbsd-inetd: {e}")
            names.remove("openbsd-inetd")
    t0 = time.time()
    try:
        info["results"] = udp_timed(names, args, bins, work)
    except (OSError, subprocess.CalledProcessError) as e:  # no `ip`, no network namespaces here
        return udp_skipped(f"could not set up its network namespace: {e}")
    log(f"udp: done in {time.time() - t0:.0f} s")
    return info


