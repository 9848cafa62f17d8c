"""A compromised connection child can harm its own connection and nothing else.

Every test starts echod with the sandbox on (the default) and two connections: `other`, which
streams random chunks and checks every byte of their echo in a thread, and `victim`. The victim's
process, a live sandboxed child, is then made to execute one system call of an attacker's choosing,
injected with ptrace (syscall_inject.py). The tests prove:

- every call in ATTEMPTS (a signal to another process or to every process, a new process, a file,
  a socket, a pipe, ptrace of another child, another process's memory, a new filter or privilege
  bit, a socket option other than the receive timeout, SIGIO aimed at another process, a new
  session or process group, shared memory, a change of memory protection) kills that child with
  SIGSYS and nothing else: the master and the spawner run on with the same pids, not stopped;
  echod logs and counts the crash; `other` keeps echoing every byte; a new connection is served;
- the calls the echo loop needs stay allowed and harmless (HARMLESS): clone cannot make a process
  (an unprivileged user with RLIMIT_NPROC 0), the receive timeout, F_GETFL, getpid;
- a child shares nothing with the master or the other children: no shared mapping, no descriptor
  but its connection and /dev/null, and the address of the master's table of connections is not
  mapped in it (a write there is EFAULT; `other`'s byte counts stay its own);
- echod refuses to run connection children as root.

x86_64 only (the injection), as root (ptrace of children running as another user). In a sanitizer
build the filter also allows what the sanitizer runtime needs: those attempts are skipped there,
never counted as passed. Every wait is bounded.
"""
import errno
import os
import random
import re
import signal
import subprocess
import threading
from collections import namedtuple

import pytest

import syscall_inject as sc
from conftest import ECHOD, clean_env, connect, ping, proc_status, sanitized, status_json, wait_until

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not sc.supported(), reason="syscall injection is implemented for x86_64 only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: ptrace of children running as another user"),
]

SIGSYS = 31
WAIT = 10.0  # seconds, for anything that should happen at once

# constants of the attempts (x86_64 Linux)
AF_UNIX, AF_INET, SOCK_STREAM = 1, 2, 1
SOL_SOCKET, SO_SNDBUF, SO_RCVTIMEO, IPPROTO_TCP, TCP_NODELAY = 1, 7, 20, 6, 1
F_GETFL, F_SETOWN, F_SETSIG, FIOSETOWN, O_ACCMODE, O_RDWR = 3, 8, 10, 0x8901, 3, 2
AT_FDCWD, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS, SECCOMP_MODE_FILTER, SECCOMP_SET_MODE_FILTER = -100, 22, 38, 2, 1
PROT_RW, PROT_RWX, MAP_SHARED_ANONYMOUS, CLOCK_MONOTONIC = 3, 7, 0x01 | 0x20, 1
PTRACE_ATTACH = 16
KILL, STOP, TERM = signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM


# --- the attempts --------------------------------------------------------------------------------
# id, the call as C would write it, its number, its arguments from the scene's pids (s.master,
# s.spawner, s.other_pid, s.victim_pid), and:
#   asan:  the filter of a sanitizer build allows it, for the sanitizer runtime
#   guard: must never really run should the filter allow it (from a child running as root,
#          kill(-1, SIGKILL) kills every root process on the machine): the filter is read and
#          evaluated first, and the call injected only if it kills the child
Attempt = namedtuple("Attempt", "id call nr args asan guard", defaults=(False, False))

ATTEMPTS = [
    # signals to other processes
    Attempt("kill-everyone", "kill(-1, SIGKILL)", sc.SYS_kill, lambda s: (-1, KILL), guard=True),
    Attempt("kill-stop-master", "kill(master, SIGSTOP)", sc.SYS_kill, lambda s: (s.master, STOP)),
    Attempt("kill-term-master", "kill(master, SIGTERM)", sc.SYS_kill, lambda s: (s.master, TERM)),
    Attempt("kill-spawner", "kill(spawner, SIGKILL)", sc.SYS_kill, lambda s: (s.spawner, KILL)),
    Attempt("tgkill-master", "tgkill(master, master, SIGKILL)", sc.SYS_tgkill, lambda s: (s.master, s.master, KILL)),
    Attempt("tkill-master", "tkill(master, SIGKILL)", sc.SYS_tkill, lambda s: (s.master, KILL)),
    Attempt("rt_sigqueueinfo", "rt_sigqueueinfo(master, SIGKILL, NULL)", sc.SYS_rt_sigqueueinfo,
            lambda s: (s.master, KILL, 0)),
    Attempt("pidfd_open", "pidfd_open(master, 0)", sc.SYS_pidfd_open, lambda s: (s.master, 0)),
    Attempt("pidfd_send_signal", "pidfd_send_signal(3, SIGKILL, NULL, 0)", sc.SYS_pidfd_send_signal,
            lambda s: (3, KILL, 0, 0)),
    # new processes
    Attempt("clone3", "clone3(NULL, 0)", sc.SYS_clone3, lambda s: (0, 0)),
    Attempt("fork", "fork()", sc.SYS_fork, lambda s: ()),
    Attempt("vfork", "vfork()", sc.SYS_vfork, lambda s: ()),
    # files, sockets, pipes (a NULL pointer will do: seccomp decides before the kernel reads it)
    Attempt("open", "open(NULL, O_RDONLY)", sc.SYS_open, lambda s: (0, 0), asan=True),
    Attempt("openat", "openat(AT_FDCWD, NULL, O_RDONLY)", sc.SYS_openat, lambda s: (AT_FDCWD, 0, 0), asan=True),
    Attempt("creat", "creat(NULL, 0600)", sc.SYS_creat, lambda s: (0, 0o600)),
    Attempt("socket", "socket(AF_INET, SOCK_STREAM, 0)", sc.SYS_socket, lambda s: (AF_INET, SOCK_STREAM, 0)),
    Attempt("socketpair", "socketpair(AF_UNIX, SOCK_STREAM, 0, NULL)", sc.SYS_socketpair,
            lambda s: (AF_UNIX, SOCK_STREAM, 0, 0)),
    Attempt("pipe2", "pipe2(NULL, 0)", sc.SYS_pipe2, lambda s: (0, 0)),
    Attempt("memfd_create", "memfd_create(NULL, 0)", sc.SYS_memfd_create, lambda s: (0, 0)),
    Attempt("connect", "connect(3, NULL, 0)", sc.SYS_connect, lambda s: (3, 0, 0)),
    Attempt("bind", "bind(3, NULL, 0)", sc.SYS_bind, lambda s: (3, 0, 0)),
    Attempt("accept4", "accept4(3, NULL, NULL, 0)", sc.SYS_accept4, lambda s: (3, 0, 0, 0)),
    # other processes' memory and execution
    Attempt("ptrace-other", "ptrace(PTRACE_ATTACH, other's child, 0, 0)", sc.SYS_ptrace,
            lambda s: (PTRACE_ATTACH, s.other_pid, 0, 0)),
    Attempt("process_vm_writev", "process_vm_writev(master, NULL, 0, NULL, 0, 0)", sc.SYS_process_vm_writev,
            lambda s: (s.master, 0, 0, 0, 0, 0)),
    # privileges and filters
    Attempt("prctl-nnp", "prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)", sc.SYS_prctl,
            lambda s: (PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), asan=True),
    Attempt("prctl-seccomp", "prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, NULL)", sc.SYS_prctl,
            lambda s: (PR_SET_SECCOMP, SECCOMP_MODE_FILTER, 0, 0, 0), asan=True),
    Attempt("seccomp", "seccomp(SECCOMP_SET_MODE_FILTER, 0, NULL)", sc.SYS_seccomp,
            lambda s: (SECCOMP_SET_MODE_FILTER, 0, 0)),
    # socket options other than the worker's receive timeout
    Attempt("setsockopt-sndbuf", "setsockopt(3, SOL_SOCKET, SO_SNDBUF, NULL, 0)", sc.SYS_setsockopt,
            lambda s: (3, SOL_SOCKET, SO_SNDBUF, 0, 0)),
    Attempt("setsockopt-nodelay", "setsockopt(3, IPPROTO_TCP, TCP_NODELAY, NULL, 4)", sc.SYS_setsockopt,
            lambda s: (3, IPPROTO_TCP, TCP_NODELAY, 0, 4)),
    Attempt("setsockopt-rcvtimeo-tcp", "setsockopt(3, IPPROTO_TCP, SO_RCVTIMEO, NULL, 16)", sc.SYS_setsockopt,
            lambda s: (3, IPPROTO_TCP, SO_RCVTIMEO, 0, 16)),
    # SIGIO (or any signal) delivered to another process
    Attempt("fcntl-setown", "fcntl(3, F_SETOWN, master)", sc.SYS_fcntl, lambda s: (3, F_SETOWN, s.master)),
    Attempt("fcntl-setsig", "fcntl(3, F_SETSIG, SIGKILL)", sc.SYS_fcntl, lambda s: (3, F_SETSIG, KILL)),
    Attempt("ioctl-fiosetown", "ioctl(3, FIOSETOWN, NULL)", sc.SYS_ioctl, lambda s: (3, FIOSETOWN, 0)),
    # leaving the process group and session
    Attempt("setpgid", "setpgid(0, 0)", sc.SYS_setpgid, lambda s: (0, 0)),
    Attempt("setsid", "setsid()", sc.SYS_setsid, lambda s: ()),
    # memory
    Attempt("mmap-shared", "mmap(NULL, 4096, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_ANONYMOUS, -1, 0)", sc.SYS_mmap,
            lambda s: (0, 4096, PROT_RW, MAP_SHARED_ANONYMOUS, -1, 0), asan=True),
    Attempt("mprotect", "mprotect(NULL, 4096, PROT_READ|PROT_WRITE|PROT_EXEC)", sc.SYS_mprotect,
            lambda s: (0, 4096, PROT_RWX), asan=True),
]

# allowed, and harmless: (id, call, nr, args, expected result as text, check of the result)
Harmless = namedtuple("Harmless", "id call nr args expect check")

HARMLESS = [
    Harmless("clone", "clone(SIGCHLD, 0, 0, 0, 0)", sc.SYS_clone, lambda s: (signal.SIGCHLD, 0, 0, 0, 0),
             "-EAGAIN (an unprivileged user with RLIMIT_NPROC 0)", lambda s, v: v == -errno.EAGAIN),
    Harmless("setsockopt-rcvtimeo", "setsockopt(3, SOL_SOCKET, SO_RCVTIMEO, NULL, 16)", sc.SYS_setsockopt,
             lambda s: (3, SOL_SOCKET, SO_RCVTIMEO, 0, 16), "-EFAULT (allowed, the value is NULL)",
             lambda s, v: v == -errno.EFAULT),
    Harmless("fcntl-getfl", "fcntl(3, F_GETFL)", sc.SYS_fcntl, lambda s: (3, F_GETFL), "the socket's O_RDWR flags",
             lambda s, v: v >= 0 and v & O_ACCMODE == O_RDWR),
    Harmless("getpid", "getpid()", sc.SYS_getpid, lambda s: (), "the victim's pid", lambda s, v: v == s.victim_pid),
]


# --- the scene -----------------------------------------------------------------------------------

class Stream:
    """`other`: random chunks of 1-64 KiB sent in a thread, each echo checked byte for byte."""

    def __init__(self, sock):
        self.sock = sock
        self.sent = 0      # handed to the kernel: the server cannot have received more
        self.received = 0  # echoed back and verified
        self.error = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        rng = random.Random()
        try:
            while not self._stop.is_set():
                chunk = rng.randbytes(rng.randint(1, 64 * 1024))
                self.sent += len(chunk)
                self.sock.sendall(chunk)
                got = bytearray()
                while len(got) < len(chunk):
                    b = self.sock.recv(len(chunk) - len(got))
                    if not b:
                        raise AssertionError(f"EOF after {self.received + len(got)} bytes echoed")
                    got += b
                if got != chunk:
                    at = next(i for i, (x, y) in enumerate(zip(got, chunk)) if x != y)
                    raise AssertionError(f"echo differs at byte {self.received + at}")
                self.received += len(chunk)
        except Exception as ex:  # noqa: BLE001 - recorded, asserted by the test
            if not self._stop.is_set():
                self.error = ex

    def assert_moving(self, timeout=WAIT):
        """No error so far, and more bytes come back verified from now on."""
        start = self.received
        wait_until(lambda: self.error is not None or self.received > start, timeout,
                   f"`other` to echo more than its {start} bytes")
        assert self.error is None, f"`other` failed: {self.error!r}"

    def stop(self):
        self._stop.set()
        self._thread.join(WAIT + 5)
        self.sock.close()


class Scene:
    """echod, `other` streaming, `victim` echoing, and the pids of all of them."""

    def __init__(self, e):
        self.e = e
        self.master = e.proc.pid
        self.spawner = self.stream = self.victim = self.victim_pid = self.other_pid = None

    def open(self):
        # READY=1 may come before the spawner has exec'd and carries its title
        self.spawner = wait_until(self.e.spawner, WAIT, "echod-spawner to run")
        self.other_pid, other = self._connect()
        self.stream = Stream(other).start()
        self.victim_pid, self.victim = self._connect()

    def _connect(self):
        before = set(self.e.children())
        s = connect(self.e.endpoint(), timeout=WAIT)
        assert ping(s)  # the child is past its setup once it echoes

        def the_new_one():
            new = set(self.e.children()) - before
            return new if len(new) == 1 else None
        (pid,) = wait_until(the_new_one, WAIT, "the new connection's child")
        return pid, s

    def close(self):
        # an attempt that got through may have made a process (killed while the victim is its
        # parent), or stopped the master or the spawner
        for pid in kids(self.victim_pid) if self.victim_pid else ():
            if is_echod(pid):
                os.kill(pid, signal.SIGKILL)
        for pid in (self.master, self.spawner):
            if pid and is_echod(pid):
                os.kill(pid, signal.SIGCONT)
        if self.stream:
            self.stream.stop()
        if self.victim:
            self.victim.close()


@pytest.fixture
def scene(echod_factory, tmpdir_path):
    # its own control socket: `other`'s counters are read from the status report
    s = Scene(echod_factory(control_socket=f'"{tmpdir_path}/control"'))
    try:
        s.open()
        yield s
    finally:
        s.close()


def is_echod(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().startswith(b"echod")
    except (FileNotFoundError, ProcessLookupError):
        return False


def kids(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):  # gone, before the open or during the read
        return []


def proc_state(pid):
    """The state letter in /proc/PID/stat, None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def assert_running(pid, what):
    state = proc_state(pid)
    assert state is not None, f"{what} (pid {pid}) is gone"
    assert state not in "TtZX", f"{what} (pid {pid}) is in state {state} (stopped, traced or dead)"


def assert_only_the_victim_affected(s, victim_killed):
    """What every test ends with: the victim's child was killed by SIGSYS (reaped, logged, counted)
    or carries on echoing, as the test expects; and nothing else noticed. The master and the
    spawner run on with the same pids, not stopped; `other`'s child is alive, not stopped, not
    traced, and its stream keeps echoing every byte; a new connection is served."""
    e = s.e

    def master_and_spawner_run():
        assert e.proc.poll() is None, f"the master exited ({e.proc.returncode}); log:\n{e.log()}"
        assert_running(s.master, "the master")
        spawner = e.spawner()
        assert spawner == s.spawner, f"the spawner is now {spawner}, was {s.spawner}"
        assert_running(s.spawner, "the spawner")

    master_and_spawner_run()
    if victim_killed:
        wait_until(lambda: s.victim_pid not in e.children(), WAIT, f"the victim's child {s.victim_pid} to be reaped")
        e.wait_log(rf"closed: killed-by-SIGSYS, \d+ bytes in, \d+ bytes out, [\d.]+ s, pid {s.victim_pid}$",
                   timeout=WAIT)
        if " 1 crashed" not in (e.current_status() or ""):
            e.wait_status(lambda st: " 1 crashed" in st, timeout=WAIT)
    else:
        assert s.victim_pid in e.children(), "the victim's child is gone"
        assert ping(s.victim, os.urandom(20000)), "the victim's connection no longer echoes"
    assert s.other_pid in e.children(), "`other`'s child is gone"
    assert_running(s.other_pid, "`other`'s child")
    assert proc_status(s.other_pid)["TracerPid"] == "0", "`other`'s child is being traced"
    s.stream.assert_moving()
    with connect(e.endpoint(), timeout=WAIT) as fresh:
        assert ping(fresh, os.urandom(20000)), "a new connection is not echoed"
    master_and_spawner_run()


# --- forbidden: they kill the child that tries them, and only it ----------------------------------

def _param(a):
    skip = pytest.mark.skipif(a.asan and sanitized(),
                              reason=f"{a.call}: this sanitizer build's filter allows it, for the sanitizer runtime")
    return pytest.param(a, id=a.id, marks=skip)


@pytest.mark.parametrize("attempt", [_param(a) for a in ATTEMPTS])
def test_forbidden_call_kills_only_that_child(scene, attempt):
    outcome = sc.inject_syscall(scene.victim_pid, attempt.nr, *attempt.args(scene), only_if_forbidden=attempt.guard)
    why = {"ALLOW": "the filter lets it through", None: "the filter could not be read and evaluated"}
    assert outcome == ("killed", SIGSYS), (
        f"{attempt.call} in a connection child: {outcome}, not killed by SIGSYS"
        + (f" ({why.get(outcome[1], 'the filter does not kill for it')}: not injected, it would reach"
           " every process the child may signal)" if outcome[0] == "not-injected" else ""))
    assert_only_the_victim_affected(scene, victim_killed=True)


# --- allowed, and harmless ------------------------------------------------------------------------

@pytest.mark.parametrize("attempt", HARMLESS, ids=[a.id for a in HARMLESS])
def test_allowed_call_is_harmless(scene, attempt):
    before = set(scene.e.children())
    outcome = sc.inject_syscall(scene.victim_pid, attempt.nr, *attempt.args(scene))
    assert outcome[0] == "returned" and attempt.check(scene, outcome[1]), (
        f"{attempt.call}: {outcome}, expected {attempt.expect}")
    assert set(scene.e.children()) == before, "the set of connection children changed"
    assert kids(scene.victim_pid) == [], "the victim's child made a process"
    assert_only_the_victim_affected(scene, victim_killed=False)


# --- nothing shared -------------------------------------------------------------------------------

def maps(pid):
    """/proc/PID/maps as (start, end, perms, path or "")."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            addr, perms, _offset, _dev, _inode, *path = line.split(None, 5)
            start, end = (int(x, 16) for x in addr.split("-"))
            out.append((start, end, perms, path[0].strip() if path else ""))
    return out


def test_child_shares_no_memory_and_no_descriptors(scene):
    masters_stderr = os.readlink(f"/proc/{scene.master}/fd/2")
    problems = []
    for pid, who in ((scene.victim_pid, "the victim's child"), (scene.other_pid, "`other`'s child")):
        shared = [f"{start:x}-{end:x} {perms} {path}" for start, end, perms, path in maps(pid) if perms[3] == "s"]
        if shared:
            problems.append(f"{who} has shared mappings: {shared}")
        fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        want = {0: "/dev/null", 1: "/dev/null", 2: "/dev/null", 3: fds.get(3, "")}
        if sanitized() and fds.get(2) == masters_stderr:
            want[2] = masters_stderr  # the sanitizer runtime reports on the master's stderr
        if fds != want or not re.fullmatch(r"socket:\[\d+\]", want[3]):
            problems.append(f"{who} has descriptors {fds}, not 0-2 on /dev/null and 3 its socket")
    assert not problems, "\n".join(problems)
    assert_only_the_victim_affected(scene, victim_killed=False)


def slot_table_address(s):
    """Where the table of connections the master reads is mapped: in the spawner (whose forks
    are the children) if it still maps it, else in the master; if neither has one, where the
    master's own state lives: its heap, or (a sanitizer build has none) its largest private
    writable anonymous mapping that the child has nothing at. Returns (address, where it was
    found)."""
    for pid, who in ((s.spawner, "spawner"), (s.master, "master")):
        for start, _, _, path in maps(pid):
            if re.search(r"memfd:\S*slot", path):
                return start, f"the {who}'s {path}"
    mine = maps(s.master)
    heap = [m[0] for m in mine if m[3] == "[heap]"]
    if heap:
        return heap[0], "the master's heap"
    child = maps(s.victim_pid)
    free = [(end - start, start) for start, end, perms, path in mine
            if perms.startswith("rw") and perms[3] == "p" and not path
            and not any(cs < end and start < ce for cs, ce, _, _ in child)]
    assert free, "no private writable mapping of the master is free in the child"
    return max(free)[1], "the master's largest anonymous mapping"


def other_counters(s):
    """`other`'s (bytes_in, bytes_out) in the master's report, and what its client had sent by then."""
    st = status_json(s.e)
    sent = s.stream.sent
    (c,) = [c for c in st["connections"] if c["pid"] == s.other_pid]
    return c["bytes_in"], c["bytes_out"], sent


def test_master_state_is_not_mapped_in_a_child(scene):
    """A child that writes where the spawner (its parent) or the master keep the table of
    connections faults: the address is not mapped in it. clock_gettime() writes 16 bytes of its
    choosing there (a timespec: over the first slot's counters, `other`'s); it is allowed by the
    filter, so the child lives on."""
    addr, what = slot_table_address(scene)
    mapped = any(start <= addr < end for start, end, _, _ in maps(scene.victim_pid))
    outcome = sc.inject_syscall(scene.victim_pid, sc.SYS_clock_gettime, CLOCK_MONOTONIC, addr)
    assert outcome == ("returned", -errno.EFAULT), (
        f"clock_gettime(CLOCK_MONOTONIC, {addr:#x}) at {what}: {outcome}, expected -EFAULT"
        + (" (the child maps that address: it wrote there)" if mapped else ""))
    # `other`'s counters are its own: within what its client sent, and growing
    first_in, first_out, sent = other_counters(scene)
    assert first_out <= sent and first_in <= sent, (
        f"`other`'s counters in={first_in} out={first_out} exceed the {sent} bytes its client sent")
    scene.stream.assert_moving()

    def grown():
        now_in, now_out, sent = other_counters(scene)
        assert now_out <= sent and now_in <= sent, (
            f"`other`'s counters in={now_in} out={now_out} exceed the {sent} bytes its client sent")
        return now_in > first_in and now_out > first_out
    wait_until(grown, WAIT, f"`other`'s counters in the status report to grow past {first_in}/{first_out}")
    assert_only_the_victim_affected(scene, victim_killed=False)


# --- root -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("user", ['""', '"root"'], ids=["empty", "root"])
def test_refuses_children_as_root(echod_factory, user):
    """Started as root with a user that keeps root (none, or root itself), echod would run every
    connection's child as root: it refuses before serving, naming the file, line and key; and
    `echod -t` says the same."""
    e = echod_factory(user=user, start=False)
    e.check_exit = False  # fails on purpose
    with open(e.conf_path) as f:
        line = next(i for i, text in enumerate(f, 1) if re.match(r"\s*user\s*=", text))
    error = re.compile(rf"{re.escape(e.conf_path)}:{line}: user: [^\n]*root", re.I)

    problems = []
    e.start(ready=False)
    try:
        rc = e.proc.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        rc = None
    e.notify.drain()
    served = any(m.get("READY") == "1" for m in e.notify.messages)
    if rc is None or rc == 0 or served:
        problems.append(f"echod started as root with user = {user}: "
                        f"{'still running' if rc is None else f'exited {rc}'}{', READY=1 sent' if served else ''}")
    if not error.search(e.log()):
        problems.append(f"no '{e.conf_path}:{line}: user: ... root' error in its log:\n{e.log()}")

    r = subprocess.run([ECHOD, "-t", "-f", e.conf_path], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, env=clean_env(), timeout=WAIT)
    if r.returncode == 0 or "configuration OK" in r.stdout or not error.search(r.stderr):
        problems.append(f"echod -t: exit {r.returncode}, stdout {r.stdout!r}, stderr {r.stderr!r}")
    assert not problems, "\n".join(problems)
