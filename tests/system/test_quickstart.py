"""A first run that just works: the README's quick start, typed by a newcomer on a fresh Debian 12.

The machine is a plain debootstrapped Debian 12 (minbase with systemd, to boot it), booted with
systemd-nspawn: none of echod's packages, none of its build or test dependencies (not even
libconfuse). The source tree (the files git knows, as a checkout has them) is copied to
/root/echod, and from there, as root (the README says `sudo`; the container has no sudo, and
root is what sudo gives):

1. `tools/run` in the background, as the quick start's first command: it installs the build
   dependencies from the Debian mirror, builds, and runs echod in the foreground on
   127.0.0.1:7007 and [::1]:7007. Once it accepts a connection,
2. the four commands of "Try it from a second terminal", verbatim from README.md (bash, from
   the top of the tree), each doing what the README says;
3. the test dependencies installed the way the quick start's second command, `tools/test`,
   starts: `tools/deps.sh test`. Only that part of it: the whole of `tools/test` (every suite,
   the system suite's own package builds and containers among them) takes far longer than a test
   should. Then the four commands again: with the test dependencies (ncat, socat, haproxy, ...)
   installed they must work the same. (The services among them are installed and enabled but,
   by a policy-rc.d, not started: the container shares the host's network and its ports.)
4. Ctrl-C (SIGINT to the echod that tools/run runs in the foreground): it drains, stops and
   exits 0, leaving nothing behind in /tmp.

Skipped, with the reason, when the container cannot reach the Debian mirror, or when the
README's port 7007 is taken on this host (the container shares the host's network). Bounded:
START_TIMEOUT for step 1, DEPS_TIMEOUT for step 3. On a 2-CPU machine with a near mirror it
takes about 1.5 minutes with the plain root cached (build/system-root-cache/plain-bookworm-*),
about a minute more the first time, to debootstrap it; most of it is apt.
"""
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

import systest
from conftest import require_container_host, skip_on
from systest import BUILD, CLEAN_PATH, ROOT, Skip

PORT = 7007
START_TIMEOUT = 600   # tools/run: apt-get install of the build dependencies, then the build
DEPS_TIMEOUT = 480    # tools/deps.sh test: a few hundred MB from the mirror
SRC = "/root/echod"   # not /tmp: a tmpfs in the booted container
APT_UNREACHABLE = re.compile(r"Failed to fetch|Unable to fetch|Could not resolve|Temporary failure resolving|"
                             r"Unable to connect|Connection timed out|Network is unreachable")


def readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def quick_start_commands():
    """The two commands of the quick start, without their comments."""
    block = re.search(r"## Quick start \(Debian 12\).*?```sh\n(.*?)```", readme(), re.S)
    assert block, "README: the quick start's command block is gone"
    return [ln.split("#")[0].strip() for ln in block.group(1).splitlines() if ln.split("#")[0].strip()]


def try_it_commands():
    """The commands of "Try it from a second terminal", as tests/integration/test_readme.py
    reads them (the same expression: that module imports its own suite's conftest)."""
    block = re.search(r"Try it from a\s+second terminal:\s*```sh\n(.*?)```", readme(), re.S)
    assert block, "README: the quick start's try-it block is gone"
    return [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]


def require_host():
    require_container_host(PORT)


def require_mirror(c):
    """The mirror the root was debootstrapped from answers inside the container. Asked with
    apt's own downloader, so that apt's state (its empty or stale lists) stays as fresh as a
    newcomer's."""
    sources = c.read("/etc/apt/sources.list")
    m = re.search(r"^deb\s+(\S+)\s+(\S+)", sources, re.M)
    assert m, sources
    url = f"{m.group(1).rstrip('/')}/dists/{m.group(2)}/InRelease"
    r = c.sh(f"/usr/lib/apt/apt-helper download-file {url} /tmp/mirror-probe; rc=$?; "
             "rm -f /tmp/mirror-probe; exit $rc", check=False, timeout=120)
    if r.returncode != 0:
        raise Skip(f"the container cannot reach its Debian mirror ({url}):\n{(r.stdout + r.stderr)[-1500:]}")


def tail(path, n=4000):
    with open(path, errors="replace") as f:
        return f.read()[-n:]


def try_it(c, commands, when):
    """Run the README's try-it commands verbatim (bash, from the top of the tree) and check each
    does what the README promises."""
    outs = []
    for cmd in commands:
        r = c.sh(f"cd {SRC} && exec bash -c {shlex.quote(cmd)}", check=False, timeout=60)
        assert r.returncode == 0, (when, cmd, r.returncode, r.stdout[-1000:], r.stderr[-1000:])
        outs.append(r)
    assert outs[0].stdout == "hello\n", (when, outs[0].stdout, outs[0].stderr)       # echoed and verified
    assert outs[1].stdout == "", (when, outs[1].stdout[-500:])                        # nothing on the terminal
    redirect = re.search(r"<\s*(\S+)", commands[1])                 # the file it sends
    assert redirect, commands[1]
    size = int(c.sh(f"cd {SRC} && stat -c %s {shlex.quote(redirect.group(1))}").stdout)
    assert re.search(rf"\b{size} bytes sent, {size} echoed intact", outs[1].stderr), (when, outs[1].stderr)
    assert len(re.findall(r"seq=\d+", outs[2].stdout)) == 5, (when, outs[2].stdout, outs[2].stderr)
    assert len(re.findall(r"bytes from 127\.0\.0\.1:7007: seq=\d+", outs[3].stdout)) == 5, \
        (when, outs[3].stdout, outs[3].stderr)


def test_quick_start_in_a_fresh_debian_12():
    started = time.monotonic()
    skip_on(require_host)
    first, second = quick_start_commands()
    assert first.startswith("sudo tools/run"), first
    assert second.startswith("sudo tools/test"), second
    with open(os.path.join(ROOT, "tools", "test")) as f:
        assert re.search(r"^tools/deps\.sh test\b", f.read(), re.M), "tools/test no longer starts with tools/deps.sh test"
    commands = try_it_commands()
    assert len(commands) == 4, commands

    cache = skip_on(systest.cached_root, systest.BASE_PACKAGES, flavour=f"plain-{systest.SUITE}")
    workdir = tempfile.mkdtemp(prefix="system-quickstart-", dir=BUILD)
    c = systest.Container(cache, workdir)
    run = log = echod = None
    phases = {}
    try:
        c.boot(machine=f"echod-quickstart-{os.getpid()}")
        # the plain root really is plain: nothing of echod's toolchain is there yet
        for pkg in ("gcc", "meson", "libconfuse-dev", "libconfuse2", "python3", "ncat"):
            st = c.sh(f"dpkg-query -W -f='${{Status}}' {pkg}", check=False).stdout
            assert "install ok installed" not in st, f"{pkg} is already installed in the fresh root"
        skip_on(require_mirror, c)
        # The container shares the host's network: keep the services the test dependencies
        # bring (prometheus on :9090, blackbox_exporter on :9115, haproxy) from being started
        # there, where they could take ports of the host or of another test run. They are
        # installed and enabled as for a newcomer, only not started now.
        c.write("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n")
        c.sh("chmod 755 /usr/sbin/policy-rc.d")
        systest.copy_source(os.path.join(c.dir, SRC.lstrip("/")))
        phases["boot"] = time.monotonic() - started

        # 1. the quick start's first command, without sudo (root already), in the foreground
        # of its own "terminal": output to a log, Ctrl-C later as SIGINT
        log_path = os.path.join(workdir, "tools-run.log")
        log = open(log_path, "w")
        cmd = first.replace("sudo ", "", 1)
        t = time.monotonic()
        run = subprocess.Popen(["nsenter", "-t", str(c.init_pid), "-a", "env", "-i", f"PATH={CLEAN_PATH}",
                                "HOME=/root", "LANG=C.UTF-8", "/bin/sh", "-c", f"cd {SRC} && exec {cmd}"],
                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if run.poll() is not None:
                out = tail(log_path)
                if APT_UNREACHABLE.search(out):
                    skip_on(require_mirror, c)  # skipped if the mirror is gone; else a failure
                pytest.fail(f"{cmd} exited {run.returncode} before echod accepted on 127.0.0.1:{PORT}:\n{out}")
            if c.sh(f"exec bash -c 'exec 3<>/dev/tcp/127.0.0.1/{PORT}'", check=False, timeout=30).returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"{cmd}: echod not accepting on 127.0.0.1:{PORT} after {START_TIMEOUT} s:\n"
                            f"{tail(log_path)}")
            time.sleep(1)
        phases["tools/run until listening"] = time.monotonic() - t
        # what answers is the echod tools/run exec'd (not another one on the shared network)
        with open(f"/proc/{run.pid}/task/{run.pid}/children") as f:
            kids = f.read().split()
        assert len(kids) == 1, kids
        echod = int(kids[0])
        built = os.path.join(c.dir, SRC.lstrip("/"), "build", "src", "echod", "echod")
        assert os.path.samestat(os.stat(f"/proc/{echod}/exe"), os.stat(built)), "tools/run's child is not the built echod"
        listeners = systest.run(["ss", "-Hltnp", f"sport = :{PORT}"], timeout=10).stdout
        for addr in (f"127.0.0.1:{PORT}", f"[::1]:{PORT}"):
            assert re.search(rf"{re.escape(addr)}\s.*pid={echod},", listeners), (addr, listeners)

        # 2. the README's try-it commands, verbatim
        t = time.monotonic()
        try_it(c, commands, "after tools/run")
        phases["try-it commands"] = time.monotonic() - t

        # 3. the test dependencies, as tools/test installs them first; then the same again
        t = time.monotonic()
        r = c.sh(f"cd {SRC} && tools/deps.sh test", check=False, timeout=DEPS_TIMEOUT)
        if r.returncode != 0 and APT_UNREACHABLE.search(r.stdout + r.stderr):
            skip_on(require_mirror, c)
        assert r.returncode == 0, f"tools/deps.sh test exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        phases["tools/deps.sh test"] = time.monotonic() - t
        assert "install ok installed" in c.sh("dpkg-query -W -f='${Status}' ncat", check=False).stdout
        assert run.poll() is None, f"tools/run ended while the test dependencies were installed:\n{tail(log_path)}"
        try_it(c, commands, "after tools/deps.sh test")

        # 4. Ctrl-C: echod drains and stops, tools/run exits 0 and leaves nothing behind
        os.kill(echod, signal.SIGINT)
        rc = run.wait(timeout=60)
        out = tail(log_path, 20000)
        assert rc == 0, f"{cmd} exited {rc} on SIGINT:\n{out}"
        assert re.search(r"received SIGINT, stopping", out) and re.search(r"stopped: \d+ connections served", out), out
        assert not systest.port_in_use(PORT), "something still listens on the README's port"
        left = c.sh("ls -A /tmp", check=False).stdout.split()
        assert not [f for f in left if f.startswith("echod")], f"tools/run left files in /tmp: {left}"
        phases["total"] = time.monotonic() - started
        print("quick start phases (s): " + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()))
    finally:
        if run is not None and run.poll() is None:
            if echod:
                try:
                    os.kill(echod, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            run.kill()
            run.wait(timeout=30)
        if log:
            log.close()
        c.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
