"""Integration test harness: runs the real echod binary on loopback.

The harness owns a NOTIFY_SOCKET (AF_UNIX datagram) and waits for READY=1 —
never sleep-and-hope. Listen addresses use port 0; the daemon reports the
ephemeral ports in STATUS= ("listening on 127.0.0.1:40123 [::1]:40124").
"""
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("ECHOD_BUILD_DIR", os.path.join(ROOT, "build"))
ECHOD = os.path.join(BUILD, "src", "echod", "echod")
ECHOC = os.path.join(BUILD, "src", "echoc", "echoc")


@functools.lru_cache(maxsize=None)
def sanitized():
    """True for a sanitizer build (meson's b_sanitize is not "none"), from the build's own record."""
    with open(os.path.join(BUILD, "meson-info", "intro-buildoptions.json")) as f:
        value = next((o["value"] for o in json.load(f) if o["name"] == "b_sanitize"), "none")
    values = value if isinstance(value, list) else value.split(",")  # a list since meson 1.8
    return any(v not in ("none", "") for v in values)


def sanitizer_env(env):
    """Make sanitizer builds fail loudly (meson 1.0 sets no *SAN_OPTIONS)."""
    env.setdefault("ASAN_OPTIONS", "abort_on_error=1:halt_on_error=1:detect_leaks=0")
    env.setdefault("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
    return env


class Notify:
    """A NOTIFY_SOCKET the test owns; collects sd_notify datagrams."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o777)  # the daemon may have dropped privileges
        self.messages = []  # list of dicts, one per datagram

    def _receive(self, seconds):
        """Yield each datagram that arrives within `seconds` (recorded in messages as usual)."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            yield self._record(data)

    def wait_for(self, pred, timeout=10.0):
        """Wait until a datagram satisfies pred(dict); returns it."""
        for msg in self._receive(timeout):
            if pred(msg):
                return msg
        raise TimeoutError(f"notify: condition not met; got {self.messages[-5:]}")

    def _record(self, data):
        msg = {}
        for line in data.decode(errors="replace").split("\n"):
            if "=" in line:
                k, v = line.split("=", 1)
                msg[k] = v
        self.messages.append(msg)
        return msg

    def collect(self, seconds, pred=None):
        """Read datagrams for the next `seconds` and return [(arrival time.monotonic(), msg)] of
        those that satisfy pred (all if None). Call drain() first: datagrams already queued would
        be timed as arriving now."""
        return [(time.monotonic(), msg) for msg in self._receive(seconds) if pred is None or pred(msg)]

    def drain(self):
        """Collect every datagram already queued, without waiting."""
        self.sock.setblocking(False)  # wait_for() sets its own timeout again
        while True:
            try:
                self._record(self.sock.recv(65536))
            except BlockingIOError:
                return

    def close(self):
        self.sock.close()


class Echod:
    """One echod process: config written to a temp dir, started with -D -e."""

    def __init__(self, tmpdir, conf, args=(), env=None, wrapper=()):
        self.dir = tmpdir
        self.conf_path = os.path.join(tmpdir, "echod.conf")
        self.write_config(conf)
        self.notify = Notify(tmpdir)
        self.stderr_path = os.path.join(tmpdir, "stderr.log")
        self.proc = None
        self.args = list(args)
        self.env = env or {}
        self.wrapper = list(wrapper)
        self.binary = ECHOD
        self.status = None
        self.addresses = []
        # teardown asserts a clean exit (0 on SIGTERM) and no sanitizer report in the log;
        # tests that make echod fail on purpose set this to False
        self.check_exit = True

    def write_config(self, conf):
        """Atomically, as editors do: a reader never sees half a file."""
        tmp = self.conf_path + ".new"
        with open(tmp, "w") as f:
            f.write(conf)
        os.replace(tmp, self.conf_path)

    def start(self, ready=True, listen_sock=None):
        """listen_sock: a listening socket the test owns, passed as fd 3 with LISTEN_FDS=1
        (as systemd would), instead of letting echod bind its configured addresses."""
        env = sanitizer_env(dict(os.environ, NOTIFY_SOCKET=self.notify.path, **self.env))
        env.pop("JOURNAL_STREAM", None)
        self.stderr = open(self.stderr_path, "wb")
        cmd = self.wrapper + [self.binary, "-D", "-e", "-f", self.conf_path] + self.args
        preexec = None
        if listen_sock is not None:
            fd = listen_sock.fileno()

            def preexec():
                os.dup2(fd, 3)  # dup2 clears FD_CLOEXEC on 3
            # LISTEN_PID must be echod's own pid: known only in the process that execs it
            cmd = ["/bin/sh", "-c", 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"', "sh"] + cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.stderr,
                                     stderr=self.stderr, env=env, preexec_fn=preexec,
                                     close_fds=listen_sock is None)  # Python fds are CLOEXEC anyway
        if ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=15.0):
        try:
            msg = self.notify.wait_for(lambda m: m.get("READY") == "1", timeout)
        except TimeoutError:
            raise AssertionError(f"echod not ready; log:\n{self.log()}")
        self._update_status(msg)
        return msg

    def _update_status(self, msg):
        if "STATUS" in msg:
            self.status = msg["STATUS"]
            m = re.search(r"listening on (.*)$", self.status)
            if m:
                self.addresses = m.group(1).split()

    def current_status(self):
        """The latest STATUS= echod sent (datagrams already queued are read first)."""
        self.notify.drain()
        for m in reversed(self.notify.messages):
            if "STATUS" in m:
                return m["STATUS"]
        return None

    def wait_status(self, pred, timeout=10.0):
        msg = self.notify.wait_for(lambda m: "STATUS" in m and pred(m["STATUS"]), timeout)
        self._update_status(msg)
        return msg["STATUS"]

    @property
    def port(self):
        """Port of the first listener."""
        return int(self.addresses[0].rsplit(":", 1)[1])

    def endpoint(self, family=socket.AF_INET):
        for a in self.addresses:
            host, port = a.rsplit(":", 1)
            if family == socket.AF_INET6 and host.startswith("["):
                return host.strip("[]"), int(port)
            if family == socket.AF_INET and not host.startswith("["):
                return host, int(port)
        raise AssertionError(f"no listener of family {family} in {self.addresses}")

    def log(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern, timeout=10.0, count=1):
        """Wait until the log matches pattern (regex) at least count times; returns the matches."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.findall(pattern, self.log(), re.M)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"log never matched {pattern!r} x{count}; log:\n{self.log()}")
            if self.proc.poll() is not None and len(re.findall(pattern, self.log(), re.M)) < count:
                raise AssertionError(f"echod exited ({self.proc.returncode}) before {pattern!r}; log:\n{self.log()}")
            time.sleep(0.02)

    def reload(self, timeout=10.0):
        """SIGHUP and wait for RELOADING=1 then READY=1."""
        self.proc.send_signal(signal.SIGHUP)
        self.notify.wait_for(lambda m: m.get("RELOADING") == "1", timeout)
        return self.wait_ready(timeout)

    def stop(self, timeout=15.0):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.stderr.close()
        return self.proc.returncode if self.proc else None

    @staticmethod
    def _kids(pid):
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            return []

    def spawner(self):
        """PID of echod-spawner, the master's child that forks the connection processes."""
        for pid in self._kids(self.proc.pid):
            try:  # by title: the children it forked carry its comm too, but their peer as title
                title = proc_title(pid)
                # an empty one is a spawner in the last steps of its exec (the master resumes from
                # posix_spawn() before the kernel has set up the new arguments)
                if title == b"echod: spawner" or (title == b"" and proc_comm(pid) == "echod-spawner"):
                    return pid
            except (FileNotFoundError, ProcessLookupError):
                pass
        return None

    def children(self):
        """PIDs of the live connection processes: the spawner's children, and any the master adopted
        when a spawner died; not the spare (forked ahead, no connection yet: titled "echod: spare",
        or still the spawner's own title in the instant after its fork)."""
        spawner = self.spawner()
        kids = [p for p in self._kids(self.proc.pid) if p != spawner] + (self._kids(spawner) if spawner else [])
        return [p for p in kids if proc_title(p) not in (b"echod: spare", b"echod: spawner")]

    def spares(self):
        """PIDs of the spawner's spares: children forked ahead of need, waiting for a connection."""
        spawner = self.spawner()
        return [p for p in (self._kids(spawner) if spawner else []) if proc_title(p) == b"echod: spare"]


def prlimit(pid, *spec):
    """Run prlimit(1) on pid as that process's own user and group: root here may lack
    CAP_SYS_RESOURCE, which another user's limits need (echod runs as nobody in these tests).
    Returns its stdout."""
    st = os.stat(f"/proc/{pid}")
    cmd = ["prlimit", f"--pid={pid}", *spec]
    if st.st_uid != os.geteuid():
        cmd = ["setpriv", f"--reuid={st.st_uid}", f"--regid={st.st_gid}", "--clear-groups"] + cmd
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def base_config(listen='"127.0.0.1:0"', **keys):
    """A config text with sane test defaults; keys override or add settings."""
    settings = {"listen": "{" + listen + "}", "log_connections": "true", "user": '"nobody"'}
    settings.update({k: v for k, v in keys.items()})
    return "".join(f"{k} = {v}\n" for k, v in settings.items())


@pytest.fixture
def tmpdir_path():
    d = tempfile.mkdtemp(prefix="echod-test-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def echod_factory(tmpdir_path):
    started = []

    def make(conf=None, args=(), env=None, start=True, wrapper=(), **keys):
        d = tempfile.mkdtemp(dir=tmpdir_path)
        os.chmod(d, 0o755)
        e = Echod(d, conf if conf is not None else base_config(**keys), args=args, env=env, wrapper=wrapper)
        started.append(e)
        if start:
            e.start()
        return e

    yield make
    problems = []
    for e in started:
        was_running = e.proc is not None and e.proc.poll() is None
        rc = e.stop()
        e.notify.close()
        log = e.log()
        if re.search(r"Sanitizer|runtime error:", log):
            problems.append(f"sanitizer report in echod's log:\n{log[-4000:]}")
        elif e.check_exit and was_running and rc != 0:
            problems.append(f"echod exited {rc} on SIGTERM; log:\n{log[-4000:]}")
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def echod(echod_factory):
    """A running echod on 127.0.0.1 with an ephemeral port and test defaults."""
    return echod_factory()


def connect(addr, timeout=10.0):
    s = socket.create_connection(addr, timeout=timeout)
    return s


def echo_roundtrip(sock, data, chunk=65536):
    """Write data and read it back concurrently (a thread writes); half-closes; returns bytes read."""
    import threading

    def writer():
        view = memoryview(data)
        while view:
            n = sock.send(view[:chunk])
            view = view[n:]
        sock.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=writer)
    t.start()
    got = bytearray()
    while True:
        b = sock.recv(1 << 20)
        if not b:
            break
        got += b
    t.join()
    return bytes(got)


def connect_from(addr, source_ip, timeout=10.0):
    """A connection from a chosen loopback source (127.0.0.2, 127.0.0.3, ... are all ours)."""
    s = socket.socket(socket.AF_INET6 if ":" in source_ip else socket.AF_INET)
    s.settimeout(timeout)
    s.bind((source_ip, 0))
    s.connect(addr)
    return s


def ping(s, data=b"ping"):
    """Send data, read it back; True if it came back intact."""
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        b = s.recv(65536)
        assert b, "connection closed while echoing"
        got += b
    return got == data


def refused(s):
    """A refused connection is accepted and closed at once: we read EOF (or a reset), never an echo."""
    try:
        s.sendall(b"anyone?")
        return s.recv(100) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def closed_by_server(s, timeout=30):
    """Read until the server closes s (EOF or a reset) without echoing anything; closes s."""
    s.settimeout(timeout)
    try:
        got = s.recv(10)
    except ConnectionResetError:
        got = b""
    s.close()
    return got == b""


def wait_admitted(addr, source="127.0.0.1", deadline=3.0):
    """Retry until a connection is admitted (echoes); returns the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline:
        s = connect_from(addr, source)
        try:
            if not refused(s):
                return time.monotonic() - t0
        finally:
            s.close()
    raise AssertionError(f"not admitted within {deadline} s")


def cpu_seconds(pid):
    """User + system CPU time a process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ContinuousClients:
    """Threads that connect, echo a few bytes and close, over and over, recording every
    failure; use as a context manager around whatever should not disturb them."""

    def __init__(self, endpoint, threads=4, payload=b"continuous"):
        import threading
        self.endpoint, self.payload = endpoint, payload
        self.ok, self.failed = 0, []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self):
        while not self._stop.is_set():
            try:
                with connect(self.endpoint, timeout=5) as s:
                    if echo_roundtrip(s, self.payload) != self.payload:
                        self.failed.append("refused or short echo")
                        continue
                self.ok += 1
            except Exception as ex:  # noqa: BLE001 - every failure is recorded
                self.failed.append(repr(ex))

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(10)


def proc_title(pid):
    """The title a process shows (its argv[0], which echod's processes set), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def proc_comm(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split("(", 1)[1].rsplit(")", 1)[0]


def sh(*cmd, check=True):
    """Run a command (bounded), capturing its output as text."""
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=30)


def stop_process(proc, log=None):
    """SIGTERM, 5 s, then SIGKILL; reaped; its log file closed."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if log:
        log.close()


def recv_exactly(s, n, what="the echo"):
    """Read n bytes; fails if the peer closes first, saying after how many."""
    got = b""
    while len(got) < n:
        chunk = s.recv(65536)
        assert chunk, f"{what}: FIN after {len(got)} of {n} bytes"
        got += chunk
    return got


def wait_until(pred, timeout, what):
    """Poll pred() until it is true (returned) or timeout seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def free_port():
    """A loopback port that was free a moment ago (tiny race, accepted where port 0 cannot be used)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_json(e):
    """`echod status --json` of echod e, parsed."""
    out = subprocess.run([ECHOD, "-f", e.conf_path, "status", "--json"], capture_output=True, text=True,
                         timeout=30, env=clean_env())
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    # another echod on the default control socket would answer for this one (each test's own
    # `control_socket` avoids that when several run at once)
    assert st["pid"] == e.proc.pid, f"the echod on {e.conf_path}'s control socket is pid {st['pid']}, not {e.proc.pid}"
    return st


def proc_status(pid):
    """/proc/PID/status as a dict of stripped values."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


_NEED_FAILED = {}  # package -> why it could not be installed (tried once per run)


def need(package, binary):
    """The path of binary, installing Debian's package if it is missing (apt-get, as root);
    skips the test with the reason when that is impossible. A skip is never a pass: the reason
    names what was missing and why it could not be had."""
    if os.access(binary, os.X_OK):
        return binary
    if package in _NEED_FAILED:
        pytest.skip(_NEED_FAILED[package])
    why = None
    if os.geteuid() != 0:
        why = f"{binary} is missing and installing {package} needs root"
    elif not shutil.which("apt-get"):
        why = f"{binary} is missing and there is no apt-get to install {package}"
    else:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        # another run may hold the dpkg lock: wait for it rather than fail
        install = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-qq",
                   "--no-install-recommends", package]
        tail = ""
        for attempt in range(2):
            if attempt:  # the package lists may be empty or stale on a fresh machine
                subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-qq"], env=env,
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=600)
            try:
                r = subprocess.run(install, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                   text=True, timeout=900)
                tail = (r.stdout + r.stderr)[-1000:]
            except subprocess.TimeoutExpired:
                tail = "apt-get install timed out"
            if os.access(binary, os.X_OK):
                return binary
        why = f"{binary} is missing and 'apt-get install {package}' did not provide it: {tail}"
    _NEED_FAILED[package] = why
    pytest.skip(why)


def clean_env():
    """Our environment minus anything that would make echod think a service manager runs it."""
    env = sanitizer_env(dict(os.environ))
    for k in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "JOURNAL_STREAM",
              "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(k, None)
    return env
