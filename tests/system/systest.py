"""System-test helpers: build the .debs from the source tree, cache a debootstrapped
Debian 12 root, and boot copies of it with systemd-nspawn, driven through nsenter.

Nothing here sleeps blindly: every wait polls a real condition against a deadline, and
every subprocess has a timeout.
"""
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import signal
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.realpath(os.environ.get("ECHOD_BUILD_DIR", os.path.join(ROOT, "build")))
ECHOD = os.path.join(BUILD, "src", "echod", "echod")
ECHOC = os.path.join(BUILD, "src", "echoc", "echoc")

SUITE = "bookworm"
# What the booted root needs besides the packages' own dependencies: an init to boot.
BASE_PACKAGES = ["systemd", "systemd-sysv"]
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Skip(Exception):
    """A prerequisite is missing: the caller reports the test as skipped with this reason."""


def run(cmd, timeout, check=True, **kw):
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.STDOUT)
    kw.setdefault("text", True)
    r = subprocess.run(cmd, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}")
    return r


def wait_until(what, pred, timeout, interval=0.05):
    """Poll pred() until it returns a true value (returned) or the deadline passes."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = pred()
        except Exception as e:  # noqa: BLE001 - reported if the deadline passes
            last = e
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


# ---- source tree and packages -------------------------------------------------------------


def source_files():
    """The files of the source tree: git's view (tracked and new, not ignored) when there is
    one, else everything but build directories."""
    try:
        out = run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                  timeout=30, stderr=subprocess.DEVNULL).stdout
        files = [f for f in out.split("\0") if f]
    except (OSError, AssertionError):
        files = []
        for d, dirs, names in os.walk(ROOT):
            rel = os.path.relpath(d, ROOT)
            dirs[:] = [x for x in dirs if not (rel == "." and (x.startswith("build") or x == ".git"))]
            files += [os.path.normpath(os.path.join(rel, n)) for n in names]
    return [f for f in files if os.path.isfile(os.path.join(ROOT, f))]


def copy_source(dest):
    for f in source_files():
        os.makedirs(os.path.join(dest, os.path.dirname(f)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, f), os.path.join(dest, f), follow_symlinks=False)


def build_debs(workdir, source, version=None, log=None, check=True):
    """dpkg-buildpackage -us -uc -b on a copy of source, a snapshot made by copy_source()
    (dpkg-buildpackage writes to the parent directory). With version, a changelog entry for it is added first (an upgrade to test);
    check=False skips the package's own unit tests (DEB_BUILD_OPTIONS=nocheck).
    Returns the path of the .changes file."""
    for tool in ("dpkg-buildpackage", "dh"):
        if not shutil.which(tool):
            raise Skip(f"{tool} not installed (dpkg-dev, debhelper)")
    src = os.path.join(workdir, "echod")
    shutil.copytree(source, src, symlinks=True)
    if version:
        with open(os.path.join(src, "debian", "changelog")) as f:
            old = f.read()
        date = run(["date", "-R"], timeout=5).stdout.strip()
        with open(os.path.join(src, "debian", "changelog"), "w") as f:
            f.write(f"echod ({version}) unstable; urgency=medium\n\n  * System test upgrade.\n\n"
                    f" -- System Test <systest@localhost>  {date}\n\n" + old)
    env = dict(os.environ, LC_ALL="C.UTF-8")
    if not check:
        env["DEB_BUILD_OPTIONS"] = "nocheck"
    r = run(["dpkg-buildpackage", "-us", "-uc", "-b"], timeout=600, check=False, cwd=src, env=env)
    if log:
        with open(log, "w") as f:
            f.write(r.stdout)
    if r.returncode != 0:
        raise AssertionError(f"dpkg-buildpackage exited {r.returncode}:\n{r.stdout[-4000:]}")
    changes = glob.glob(os.path.join(workdir, "echod_*.changes"))
    assert len(changes) == 1, changes
    return changes[0]


def debs_of(changes):
    d = os.path.dirname(changes)
    return {os.path.basename(p).split("_")[0]: p
            for p in glob.glob(os.path.join(d, "*.deb")) if "dbgsym" not in p}


def runtime_depends(debs):
    """Package names the .debs depend on (first of each alternative), for the root."""
    names = set()
    for deb in debs:
        dep = run(["dpkg-deb", "-f", deb, "Depends"], timeout=30).stdout
        for item in dep.split(","):
            name = item.split("|")[0].strip().split(" ")[0].split(":")[0]
            if name and name not in ("echod", "echoc"):
                names.add(name)
    return sorted(names)


# ---- the cached root ----------------------------------------------------------------------


def host_mirror():
    """The Debian mirror of the host's apt sources (only Debian's registry is reachable)."""
    entries = []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        with open(path) as f:
            for stanza in f.read().split("\n\n"):
                fields = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.startswith((" ", "#")):
                        k, v = line.split(":", 1)
                        fields[k.strip().lower()] = v.strip()
                if fields.get("enabled", "yes") != "no" and "deb" in fields.get("types", "").split():
                    for uri in fields.get("uris", "").split():
                        entries.append((uri, fields.get("suites", "").split()))
    for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
        try:
            with open(path) as f:
                for line in f:
                    m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
                    if m:
                        entries.append((m.group(1), [m.group(2)]))
        except OSError:
            pass
    for uri, suites in entries:
        if SUITE in suites and "security" not in uri:
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def cached_root(packages, flavour=SUITE):
    """A debootstrapped Debian 12 root with packages, made once and kept under the build
    tree (keyed by suite, mirror and package list). Returns its path. Roots of one flavour
    replace each other when the package list changes; other flavours' roots are kept (the
    packages' root and test_quickstart.py's plain one are both needed in one run)."""
    if not shutil.which("debootstrap"):
        raise Skip("debootstrap not installed")
    mirror = host_mirror()
    key = hashlib.sha256(f"{SUITE} {mirror} {' '.join(sorted(packages))}".encode()).hexdigest()[:12]
    cache = os.path.join(BUILD, "system-root-cache")
    root = os.path.join(cache, f"{flavour}-{key}")
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one debootstrap at a time; the others reuse it
        if os.path.isfile(os.path.join(root, ".complete")):
            return root
        tmp = root + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        r = run(["debootstrap", "--variant=minbase", "--include=" + ",".join(sorted(packages)),
                 SUITE, tmp, mirror], timeout=900, check=False)
        if r.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise AssertionError(f"debootstrap from {mirror} failed:\n{r.stdout[-4000:]}")
        run(["chroot", tmp, "apt-get", "clean"], timeout=60)
        open(os.path.join(tmp, ".complete"), "w").close()
        shutil.rmtree(root, ignore_errors=True)
        os.rename(tmp, root)
        for old in glob.glob(os.path.join(cache, f"{flavour}-*")):  # roots for other package lists
            if old != root:
                shutil.rmtree(old, ignore_errors=True)
    return root


# ---- the booted container -----------------------------------------------------------------


def port_in_use(port):
    out = run(["ss", "-Hltn", f"sport = :{port}"], timeout=10).stdout
    return out.strip() != ""


class Container:
    """A copy of the cached root booted with systemd-nspawn (host network), driven with
    nsenter into the namespaces of its PID 1."""

    def __init__(self, cache_root, workdir):
        self.dir = os.path.join(workdir, "root")
        self.log = os.path.join(workdir, "nspawn.log")
        self.proc = None
        self.init_pid = None
        with open(os.path.join(os.path.dirname(cache_root), "lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH)  # not pruned by another run while we copy
            run(["cp", "-a", "--reflink=auto", cache_root, self.dir], timeout=300)
        os.unlink(os.path.join(self.dir, ".complete"))

    # -- lifecycle

    def boot(self, timeout=60, machine=None):
        """machine: the container's name (hostname); unique per process by default."""
        machine = machine or f"echod-systest-{os.getpid()}"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--console=pipe",
                 "--quiet", f"--machine={machine}", "-D", self.dir],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

        def init_running():
            if self.proc.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited {self.proc.returncode}: {self.boot_log()}")
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                for pid in f.read().split():
                    with open(f"/proc/{pid}/comm") as c:
                        if c.read().strip() == "systemd":
                            return int(pid)
            return None

        self.init_pid = wait_until("the container's systemd (a child of systemd-nspawn)",
                                   init_running, timeout)
        def system_state():
            r = self.sh("systemctl is-system-running --wait", check=False, timeout=timeout)
            state = r.stdout.strip()
            return state if state in ("running", "degraded") else None

        state = wait_until("'systemctl is-system-running --wait' to answer", system_state, timeout)
        if state != "running":
            failed = self.sh("systemctl --failed --no-legend", check=False).stdout
            raise AssertionError(f"container booted {state}; failed units:\n{failed}")

    def boot_log(self):
        try:
            with open(self.log) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def destroy(self):
        """Power off (or kill) the container and remove its root. Safe to call twice."""
        if self.proc and self.proc.poll() is None:
            if self.init_pid:
                self.sh("systemctl poweroff --no-block", check=False, timeout=10)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                # nspawn turns SIGTERM into an orderly shutdown; then force it
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    if self.init_pid:
                        try:
                            os.kill(self.init_pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    self.proc.wait(timeout=15)
        # nspawn mounts in its own namespace; should anything be left on the host, detach it
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f]
        for m in sorted((m for m in mounts if m == self.dir or m.startswith(self.dir + "/")),
                        reverse=True):
            run(["umount", "-l", m], timeout=30, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- commands inside

    def sh(self, script, check=True, timeout=60, input=None):
        """Run a shell script inside the container (all of PID 1's namespaces, a clean
        environment). The result is also kept in self.last."""
        cmd = ["nsenter", "-t", str(self.init_pid), "-a", "env", "-i", f"PATH={CLEAN_PATH}",
               "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0",
               "/bin/sh", "-c", script]
        self.last = subprocess.run(cmd, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, timeout=timeout)
        if check and self.last.returncode != 0:
            raise AssertionError(f"in container: {script!r} exited {self.last.returncode}\n"
                                 f"stdout: {self.last.stdout}\nstderr: {self.last.stderr}")
        return self.last

    def popen(self, script):
        """Start a script inside without waiting for it (text output on .stdout)."""
        return subprocess.Popen(["nsenter", "-t", str(self.init_pid), "-a", "env", "-i", f"PATH={CLEAN_PATH}",
                                 "/bin/sh", "-c", script],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def show(self, unit, prop):
        return self.sh(f"systemctl show -P {prop} {unit}").stdout.strip()

    def read(self, path):
        return self.sh(f"cat {path}").stdout

    def write(self, path, text):
        self.sh(f"cat > {path}", input=text)

    def proc_status(self, pid):
        """The fields of /proc/PID/status, read inside (pid as the container sees it)."""
        out = self.read(f"/proc/{pid}/status")
        return dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)

    def kids(self, pid):
        return [int(p) for p in self.read(f"/proc/{pid}/task/{pid}/children").split()]

    def spawner(self, main_pid):
        """echod-spawner: the master's child that forks the connection processes."""
        for pid in self.kids(main_pid):  # by title: its children carry its comm too
            if self.cmdline(pid) == "echod: spawner":
                return pid
        return None

    def children(self, main_pid):
        """The connection processes: the spawner's children (and any the master adopted), not its
        spare (forked ahead, no connection: "echod: spare", or the spawner's title just after its fork)."""
        spawner = self.spawner(main_pid)
        kids = [p for p in self.kids(main_pid) if p != spawner] + (self.kids(spawner) if spawner else [])
        titles = self.sh("".join(f"printf '%s ' {p}; tr '\\0' ' ' < /proc/{p}/cmdline 2>/dev/null; echo; "
                                 for p in kids), check=False).stdout if kids else ""
        spares = {int(ln.split(" ", 1)[0]) for ln in titles.splitlines()
                  if ln.split(" ", 1)[-1].strip() in ("echod: spare", "echod: spawner")}
        return [p for p in kids if p not in spares]

    def cmdline(self, pid):
        return self.read(f"/proc/{pid}/cmdline").replace("\0", " ").strip()

    def cursor(self):
        """The journal's current end, to read only what comes after."""
        out = self.sh("journalctl -n 0 --show-cursor --no-pager").stdout
        m = re.search(r"-- cursor: (\S+)", out)
        return m.group(1) if m else None

    def records(self, cursor=None, unit="echod.service", message_id=None):
        """The unit's journal entries (dicts) after cursor, optionally with one MESSAGE_ID.
        The MESSAGE_ID is matched here: journalctl 252 returns nothing for a field match
        combined with --after-cursor."""
        after = f"--after-cursor='{cursor}'" if cursor else ""
        out = self.sh(f"journalctl -u {unit} {after} -o json --no-pager").stdout
        recs = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [r for r in recs if message_id is None or r.get("MESSAGE_ID") == message_id]

    def messages(self, cursor=None, unit="echod.service"):
        return "\n".join(str(r.get("MESSAGE", "")) for r in self.records(cursor, unit))

    def wait_active(self, unit, timeout=30):
        return wait_until(f"{unit} to be active",
                          lambda: self.sh(f"systemctl is-active {unit}", check=False).stdout.strip()
                          == "active", timeout)

    def apt_install(self, packages, timeout=600):
        """Install packages from the container's Debian mirror (the one the root was
        debootstrapped from), without their Recommends. Raises Skip when the mirror cannot be
        reached: only Debian's registry is, and only while the host's network allows."""
        missing = [p for p in packages
                   if "install ok installed" not in self.sh(f"dpkg-query -W -f='${{Status}}' {p}",
                                                           check=False).stdout]
        if not missing:
            return
        r = self.sh("apt-get update -q", check=False, timeout=timeout)
        if r.returncode != 0 or re.search(r"^(W|E): (Failed to fetch|Some index files failed)", r.stdout + r.stderr, re.M):
            raise Skip(f"cannot install {' '.join(missing)} in the container: 'apt-get update' "
                       f"cannot reach its mirror:\n{(r.stdout + r.stderr)[-1500:]}")
        r = self.sh(f"apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "
                    f"{' '.join(missing)}", check=False, timeout=timeout)
        if r.returncode != 0 and re.search(r"Failed to fetch|Unable to fetch|Could not resolve|Temporary failure",
                                           r.stdout + r.stderr):
            raise Skip(f"cannot install {' '.join(missing)} in the container: the mirror cannot be "
                       f"reached:\n{(r.stdout + r.stderr)[-1500:]}")
        assert r.returncode == 0, f"apt-get install {' '.join(missing)}:\n{r.stdout}\n{r.stderr}"


def echo_once(host, payload, timeout=10):
    """One connection: send, half-close, read the echo to EOF. Returns (echo, local port)."""
    with socket.create_connection((host, 7), timeout=timeout) as s:
        port = s.getsockname()[1]
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return got, port
            got += chunk
