"""Setting up a run: the peers installed from Debian, echod built, the baselines and helpers
compiled, openbsd-inetd extracted from its package, and what the host is."""
import datetime
import os
import platform
import re
import resource
import shutil
import subprocess
import sys

from .common import BENCH, ROOT, log, run

# tool → Debian package; all installed with apt-get when missing (openbsd-inetd is not: it
# conflicts with xinetd, see openbsd_inetd())
DEBIAN_PEERS = {"socat": "socat", "xinetd": "xinetd", "ncat": "ncat", "tcpserver": "ucspi-tcp", "tcpsvd": "ipsvd",
                "gnuplot": "gnuplot-nox"}


def install_deps():
    missing = [pkg for tool, pkg in DEBIAN_PEERS.items() if not shutil.which(tool)]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"bench: missing {' '.join(missing)}; run as root (sudo bench/run) to install them")
    log("installing", *missing)
    run(["apt-get", "install", "-y", "--no-install-recommends", *missing], stdout=subprocess.DEVNULL)


def build(args, work):
    """echod in release mode in its own build dir; the baselines and the helper with cc -O2."""
    if args.echod_build:
        bdir = args.echod_build
    else:
        bdir = os.path.join(ROOT, "build-bench")
        if os.geteuid() == 0 and not args.no_deps:
            run([os.path.join(ROOT, "tools", "deps.sh"), "build"], stdout=subprocess.DEVNULL)
        if not os.path.exists(os.path.join(bdir, "build.ninja")):
            run(["meson", "setup", bdir, "--buildtype=release", "-Dtests=false", "-Dman=disabled"],
                cwd=ROOT, stdout=subprocess.DEVNULL)
        run(["meson", "compile", "-C", bdir], stdout=subprocess.DEVNULL)
    bins = {"echod": os.path.join(bdir, "src", "echod", "echod"),
            "echoc": args.echoc or os.path.join(bdir, "src", "echoc", "echoc"), "echod_conf": args.config}
    if args.reference_build:
        bins["echod-ref"] = os.path.join(args.reference_build, "src", "echod", "echod")
    # the textbook linked dynamically (as a distribution builds it) and statically (lean-fork: the
    # cheapest fork per connection there is), the epoll server, the helper client
    for name, src, extra in (("forkserver", "baseline/forkserver.c", []),
                             ("forkserver-static", "baseline/forkserver.c", ["-static"]),
                             ("epollserver", "baseline/epollserver.c", []),
                             ("benchcli", "tools/benchcli.c", [])):
        out = os.path.join(work, name)
        run(["cc", "-O2", "-Wall", "-Wextra", *extra, "-o", out, os.path.join(BENCH, src)])
        bins[name] = out
    # the host's process cost: a tiny static process forked, exited and reaped
    bins["forkcost"] = os.path.join(work, "forkcost")
    run(["cc", "-O2", "-static", "-o", bins["forkcost"], os.path.join(BENCH, "tools", "forkcost.c")])
    return bins


def openbsd_inetd(args):
    """openbsd-inetd's binary and version: --inetd, or the Debian package downloaded and extracted
    (not installed: it conflicts with xinetd), cached in build-bench/peers/."""
    if args.inetd:
        return args.inetd, ""
    cache = os.path.join(ROOT, "build-bench", "peers")
    binary = os.path.join(cache, "root", "usr", "sbin", "inetd")
    debs = lambda: sorted(f for f in os.listdir(cache) if f.startswith("openbsd-inetd_") and f.endswith(".deb"))
    if not os.path.exists(binary):
        if args.no_deps:
            raise RuntimeError(f"not in {cache} and --no-deps given (pass --inetd, or run once without --no-deps)")
        os.makedirs(cache, exist_ok=True)
        r = subprocess.run(["apt-get", "download", "openbsd-inetd"], cwd=cache, capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0 or not debs():
            raise RuntimeError(f"apt-get download openbsd-inetd failed: {r.stderr.strip()[-300:]}")
        run(["dpkg-deb", "-x", os.path.join(cache, debs()[-1]), os.path.join(cache, "root")])
    return binary, (debs()[-1].split("_")[1] if debs() else "")


def fork_cost_us(bins):
    """Mean µs per fork + exit + reap of a tiny static process (bench/tools/forkcost.c, no filter)."""
    out = subprocess.run([bins["forkcost"], "0"], capture_output=True, text=True, check=True).stdout
    return float(re.search(r"([\d.]+) µs per fork", out).group(1))


def system_info(bins):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    rd = lambda p: open(p).read().strip() if os.path.exists(p) else "?"
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "nproc": os.cpu_count(), "kernel": platform.release(), "cpu": cpu, "mem_gib": mem / (1 << 20),
            "pid_max": rd("/proc/sys/kernel/pid_max"), "threads_max": rd("/proc/sys/kernel/threads-max"),
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1], "somaxconn": rd("/proc/sys/net/core/somaxconn"),
            "fork_us": fork_cost_us(bins)}
