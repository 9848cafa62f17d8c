"""RESULTS.md and rate.png: the generated tables, then bench/FINDINGS.md appended once.

RESULTS.md is the generated part (TCP tables, then the UDP section) followed by a marker line and
the hand-written bench/FINDINGS.md as it is now. Whatever rewrites the file (a full run, `--udp`,
`--from-json`) keeps only the generated part of the old file and appends FINDINGS.md afresh, so
no hand-written section can be carried over twice."""
import os
import re
import subprocess

from .common import BENCH, fmt, log, ratio
from .servers import COMMANDS, ECHODS, PEERS, SERVERS

FINDINGS = os.path.join(BENCH, "FINDINGS.md")
FINDINGS_MARK = "<!-- Everything below is bench/FINDINGS.md, appended by bench/run: edit it there, not here. -->"


def rows_of(args):
    """(label, key-function, better) for every measured figure."""
    rows = []
    for n in args.concurrency:
        rows.append((f"connection rate, {n} client{'s' if n > 1 else ''} (conn/s)", lambda r, n=n: r[f"rate{n}"], "higher"))
    rows.append(("RTT p50, 64 B persistent (µs)", lambda r: r["p50_us"], "lower"))
    rows.append(("RTT p99, 64 B persistent (µs)", lambda r: r["p99_us"], "lower"))
    rows.append(("RTT p50, 64 B persistent, client and server on one CPU (µs)", lambda r: r["p50_1cpu_us"], "lower"))
    rows.append((f"throughput, {args.stream_bytes >> 20} MiB one connection (MiB/s)", lambda r: r["mib_s"], "higher"))
    for n in args.held:
        rows.append((f"PSS per idle connection at {n:,} (KiB)", lambda r, n=n: r[f"hold{n}"]["pss_kib"], "lower"))
        rows.append((f"MemAvailable drop per connection at {n:,} (KiB)", lambda r, n=n: r[f"hold{n}"]["avail_kib"], "lower"))
    rows.append(("overload: admitted RTT p99 (µs)", lambda r: r["overload"]["under_p99_us"], "lower"))
    return rows


def value(get, res):
    try:
        return get(res)
    except (KeyError, TypeError):
        return None


def targets_19(args, results):
    """Issue 19's targets for echod, one row each: (target, measured, verdict)."""
    e, b, lean = results.get("echod"), results.get("baseline"), results.get("lean-fork")
    if not e or not b:
        return []
    out = []

    def q(x, y):
        return x / y if x is not None and y else None

    def row(label, r, ok, detail=None):
        verdict = "n/a" if ok is None else "**met**" if ok else "**NOT met**"
        out.append(f"| {label} | {detail or (f'{r:.2f}×' if r is not None else '—')} | {verdict} |")

    many = [n for n in args.concurrency if n > 1]
    for n in many:
        r = q(e.get(f"rate{n}"), lean.get(f"rate{n}")) if lean else None
        row(f"connection rate at {n} clients ≥ 0.9× lean-fork (stretch ≥ 1.0×)", r, r is not None and r >= 0.9,
            None if r is None else f"{r:.2f}× (stretch {'met' if r >= 1.0 else 'not met'})")
    worst = None
    for p in PEERS:
        if p not in results:
            continue
        cells, ok, compared = [], True, False
        for n in many:
            pv, ev = results[p].get(f"rate{n}") or 0, e.get(f"rate{n}") or 0
            if pv > 0:
                r = ev / pv
                cells.append(f"{n}: {r:.2f}×")
                ok, compared = ok and r >= 3, True
                if worst is None or r < worst[0]:
                    worst = (r, p, n)
            else:  # ncat: half-closing clients never get their echo, so no connection counts
                cells.append(f"{n}: — ({p} completed no connection with its echo)")
        ok = ok if compared else None
        row(f"connection rate at {' and '.join(map(str, many))} clients ≥ 3× {p}", None, ok, ", ".join(cells))
    if worst:
        row("(the same, all peers: the lowest ratio)", worst[0], worst[0] >= 3,
            f"{worst[0]:.2f}× ({worst[1]}, {worst[2]} clients)")
    if 1 in args.concurrency:
        r = q(e.get("rate1"), b.get("rate1"))
        row("connection rate at 1 client ≥ 2× textbook", r, r is not None and r >= 2)
    r = q(e.get("p50_us"), b.get("p50_us"))
    r1 = q(e.get("p50_1cpu_us"), b.get("p50_1cpu_us"))
    row("RTT p50 ≤ 1.0× textbook", r, r is not None and r <= 1.0,
        None if r is None else f"{r:.2f}× ({fmt(e['p50_us'])} vs {fmt(b['p50_us'])} µs; on one CPU {r1:.2f}×, see below)")
    r = q(e.get("mib_s"), b.get("mib_s"))
    row("throughput ≥ 1.3× textbook", r, r is not None and r >= 1.3)
    n = max(args.held)
    for key, what in (("pss_kib", "PSS"), ("avail_kib", "MemAvailable drop")):
        r = q(value(lambda x: x[f"hold{n}"][key], e), value(lambda x: x[f"hold{n}"][key], b))
        row(f"{what} per held connection at {n:,} ≤ 0.5× textbook", r, r is not None and 0 <= r <= 0.5)
    return ["| target (echod, shipped config) | measured (echod ÷ server) | |", "|---|---|---|"] + out


def other_targets(args, results):
    e, b = results.get("echod"), results.get("baseline")
    if not e or not b:
        return []
    out = ["| check | measured | |", "|---|---|---|"]
    r = e["p50_1cpu_us"] / b["p50_1cpu_us"] if b.get("p50_1cpu_us") else None
    out.append(f"| RTT p50 ≤ 1.0× textbook, client and server on one CPU | {ratio(e['p50_1cpu_us'], b['p50_1cpu_us'])} | "
               f"{'**met**' if r is not None and r <= 1.0 else '**NOT met**'} |")
    for n in args.held:
        bp, ep = value(lambda x: x[f"hold{n}"]["pss_kib"], b), value(lambda x: x[f"hold{n}"]["pss_kib"], e)
        ok = bp and ep is not None and ep / bp <= 1.0
        out.append(f"| PSS per idle connection at {n:,} ≤ 1.0× textbook | {ratio(ep, bp)} | {'**met**' if ok else '**NOT met**'} |")
    n = max(args.held)
    h = e.get(f"hold{n}", {})
    ok = h.get("held") == n and h.get("echoed") == n
    out.append(f"| {n:,} concurrent connections held and echoing | {h.get('held', 0):,} held, {h.get('echoed', 0):,} "
               f"echoed again | {'**met**' if ok else '**NOT met**'} |")
    return out


def report(args, info, results, udp_section=""):
    """The generated part of RESULTS.md (FINDINGS.md is appended by compose())."""
    servers = [s for s in SERVERS if s in results]
    base = results.get("baseline", {})
    rows = rows_of(args)

    out = ["| measure | better | " + " | ".join(servers) + " | " + " | ".join(f"{s}/baseline" for s in servers if s != "baseline") + " |",
           "|---|---|" + "---:|" * (2 * len(servers) - 1)]
    for label, get, better in rows:
        vals = [value(get, results[s]) for s in servers]
        b = value(get, base)
        cells = [fmt(v) for v in vals] + [ratio(v, b) for s, v in zip(servers, vals) if s != "baseline"]
        out.append(f"| {label} | {better} | " + " | ".join(cells) + " |")
    table = "\n".join(out)

    others = [s for s in servers if s not in ECHODS]
    vs = []
    if "echod" in results:
        vs = ["| measure | better | " + " | ".join(f"echod/{s}" for s in others) + " |",
              "|---|---|" + "---:|" * len(others)]
        for label, get, better in rows:
            ev = value(get, results["echod"])
            vs.append(f"| {label} | {better} | " + " | ".join(ratio(ev, value(get, results[s])) for s in others) + " |")
    if "echod" in results and "echod-ref" in results:
        vs += ["", f"echod against the reference build (`--reference-build {args.reference_build}`), same run:", "",
               "| measure | better | echod | echod-ref | echod/echod-ref |", "|---|---|---:|---:|---:|"]
        for label, get, better in rows:
            v, w = value(get, results["echod"]), value(get, results["echod-ref"])
            if v is not None and w is not None:
                vs.append(f"| {label} | {better} | {fmt(v)} | {fmt(w)} | {ratio(v, w)} |")

    how = ["| server | command | notes |", "|---|---|---|"]
    for s in servers:
        cmd, notes = COMMANDS.get(s, COMMANDS["echod"] if s in ECHODS else ("?", ""))
        if s == "openbsd-inetd" and info.get("inetd_version"):
            notes = f"version {info['inetd_version']}; " + notes
        how.append(f"| {s} | {cmd} | {notes} |")

    held = ["| server | " + " | ".join(f"held / echoed again at {n:,} (processes)" for n in args.held) + " |",
            "|---|" + "---|" * len(args.held)]
    for s in servers:
        cells = []
        for n in args.held:
            h = results[s].get(f"hold{n}")
            cells.append(f"{h.get('held', 0):,} / {h.get('echoed', 0):,} ({h.get('processes', 0):,})" if h else "not measured")
        held.append(f"| {s} | " + " | ".join(cells) + " |")

    ov = [f"| server | admitted: {args.capacity} persistent clients, RTT p99 alone → with overload (µs) | admitted round trips/s alone → under | kept, each run | admitted failures, all runs | excess connections ({10 * args.capacity} clients): served / refused or failed |",
          "|---|---|---|---|---|---|"]
    for s in servers:
        o = results[s].get("overload")
        if not o:
            ov.append(f"| {s} | not measured | | | | |")
            continue
        kept = ", ".join(f"{k:.0%}" for k in o.get("kept", []))
        ov.append(f"| {s} | {fmt(o['alone_p99_us'])} → {fmt(o['under_p99_us'])} | {fmt(o['alone_rtt_s'])} → {fmt(o['under_rtt_s'])} "
                  f"| {kept} | {o['admitted_failed']:,.0f} | {o['excess_ok']:,.0f} / {o['excess_refused']:,.0f} |")

    fails = [f"{s}: {k} had {v} failed/refused" for s in servers for k, v in results[s].items()
             if k.endswith("_failed") and v]
    fails += [f"{s}: stream: {results[s]['stream_error']}" for s in servers if results[s].get("stream_error")]
    fails += [f"{s}: {what} not measured: {err}" for s in servers for what, err in results[s].get("errors", {}).items()]

    i = info
    md = f"""# echod benchmark results

**Host: {i['cpu']}, {i['nproc']} vCPUs, Linux {i['kernel']}; a static fork + exit + reap costs {i.get('fork_us', 0):.0f} µs here**
(`bench/tools/forkcost.c`: a tiny static process forked, exited and reaped; hosts differ about 5× in this, and every
fork-per-connection figure with it). {i['mem_gib']:.1f} GiB RAM; pid_max {i['pid_max']}, threads-max {i['threads_max']},
RLIMIT_NOFILE {i['nofile']}, somaxconn {i['somaxconn']}.

Generated by `bench/run{' --quick' if args.quick else ''}` on {i['date']}.
Servers and load generator share the machine on 127.0.0.1: only ratios from the same run count.
Each rate/latency/throughput figure is the median of {args.repeat} run(s) of {args.duration} s (throughput: one {args.stream_bytes >> 20} MiB stream each);
all servers are up together and every repeat measures each of them in turn, the order rotating, so drift of the machine hits all alike.
"baseline" is the textbook fork server; "better" says which direction is good.

## Results

![connection rate against concurrency](rate.png)

Every server, and each ÷ the textbook:

{table}

echod ÷ each server (the textbook, the two bounds, every peer):

{chr(10).join(vs)}

### The servers in this run

{chr(10).join(how)}

lean-fork and epoll are not peers but the two ends of the scale: lean-fork is the least a fork per connection
can cost on this host (the limit of echod's design), epoll what no fork at all gives (the ceiling of any design).

### Held connections (memory scenario)

{chr(10).join(held)}

PSS: the increase of the summed `Pss` of the server's whole process tree, per connection; MemAvailable: its drop
(server, client and kernel together), per connection. Every held connection echoes once more before it closes.

### Overload

{chr(10).join(ov)}

Each figure is the median of {args.overload_repeat} run(s) of {args.duration} s, one server at a time; "kept" is each run's admitted
round trips per second under overload as a share of those alone.
echod runs here with `max_connections = max_per_source = {args.capacity}` (everything else shipped); the other servers have no
comparable limit in the configurations used, so they fork (or, epoll, accept) for every excess connection.

### Issue 19 targets

{chr(10).join(targets_19(args, results))}

Unpinned RTT p50 is bimodal on this host, for every server: about 20–40 µs (what pinning client and server
to one CPU gives) or about 100–120 µs (most likely every echo's wakeup crossing CPUs, an IPI in this VM).
Which mode a server lands in changes from run to run with no change to the server (the textbook and echod
both read ~115 µs in the run before this one, 65 and 24 µs in an earlier one), so this ratio can read 0.25×
or 1.0× by placement alone; the one-CPU p50 below (client and server pinned to CPU 0) is the server's own
work per echo and the figure to compare.

### Other checks

{chr(10).join(other_targets(args, results))}
"""
    if fails:
        md += "\n### Failures seen\n\n" + "\n".join(f"- {f}" for f in fails) + "\n"
    if udp_section:
        md += "\n" + udp_section
    return md


def _findings_headings():
    if not os.path.exists(FINDINGS):
        return []
    return [l.rstrip("\n") for l in open(FINDINGS) if l.startswith("## ")]


def generated_part(text):
    """The generated part of a RESULTS.md: everything before FINDINGS.md was appended. A file
    written before the marker existed is cut at its first hand-written heading."""
    if FINDINGS_MARK in text:
        return text.split(FINDINGS_MARK, 1)[0].rstrip("\n") + "\n"
    cut = len(text)
    for h in _findings_headings() + ["## Where the time goes"]:
        m = re.search(rf"(?m)^{re.escape(h)}", text)
        if m:
            cut = min(cut, m.start())
    return text[:cut].rstrip("\n") + "\n"


HOLD_BEGIN, HOLD_END = "<!-- hold:begin -->", "<!-- hold:end -->"


def hold_section(text):
    """bench/hold's section of a RESULTS.md (its markers included), or ""."""
    if HOLD_BEGIN in text and HOLD_END in text:
        return text[text.index(HOLD_BEGIN):text.index(HOLD_END) + len(HOLD_END)] + "\n"
    return ""


def compose(generated, with_findings=True, old_path=None):
    """A whole RESULTS.md: the generated part, bench/hold's section carried over from the file at
    old_path (bench/run does not measure it), then FINDINGS.md (as it is now) exactly once."""
    md = generated.rstrip("\n") + "\n"
    hold = hold_section(open(old_path).read()) if old_path and os.path.exists(old_path) else ""
    if hold and HOLD_BEGIN not in md:
        md += "\n" + hold
    if with_findings and os.path.exists(FINDINGS):
        md += "\n" + FINDINGS_MARK + "\n\n" + open(FINDINGS).read()
    heads = [l for l in md.splitlines() if l.startswith("## ")]
    dup = sorted({h for h in heads if heads.count(h) > 1})
    if dup:
        log("warning: RESULTS.md would have these sections more than once:", *dup)
    return md


def replace_udp_section(path, section, with_findings=True):
    """RESULTS.md with its "## UDP echo" section replaced (or added at the end of the generated part)."""
    old = generated_part(open(path).read()) if os.path.exists(path) else ""
    m = re.search(r"(?m)^## UDP echo\n.*?(?=^## |\Z)", old, re.S)
    if m:
        new = old[:m.start()] + section.rstrip("\n") + "\n\n" + old[m.end():]
    else:
        new = old + ("\n" if old else "") + section
    return compose(new, with_findings, path)


def plot(args, results, outdir):
    dat = os.path.join(outdir, "rate.dat")
    servers = [s for s in SERVERS if s in results]
    with open(dat, "w") as f:
        f.write("clients " + " ".join(servers) + "\n")
        for n in args.concurrency:
            f.write(f"{n} " + " ".join(f"{results[s][f'rate{n}']:.1f}" for s in servers) + "\n")
    png = os.path.join(outdir, "rate.png")
    # a colour each: gnuplot's default cycle has 8, and there are up to 11 servers
    colours = ["#000000", "#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
    plots = ", ".join(f"'{dat}' using 1:{k + 2} with linespoints lw 2 pt {k + 1} lc rgb '{colours[k % len(colours)]}' "
                      f"title '{s}'" for k, s in enumerate(servers))
    script = f"""set terminal pngcairo size 800,500
set output '{png}'
set title 'Connection rate (connect, 64 B echoed and verified, close) — 127.0.0.1, {os.cpu_count()} CPUs'
set xlabel 'concurrent clients'
set ylabel 'connections/s'
set logscale x 2
set xrange [0.8:90]
set xtics ({', '.join(str(n) for n in args.concurrency)})
set yrange [0:*]
set key outside right
set grid
plot {plots}
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    os.unlink(dat)
    return png


