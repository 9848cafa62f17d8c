"""The children's sandbox, read from /proc of real children: uid/gid, no groups, no
capabilities, no_new_privs, seccomp filter mode, resource limits, oom_score_adj; and a forbidden
system call, injected into a live child with gdb, kills that child only."""
import os
import pwd
import shutil
import pytest

import syscall_inject
from conftest import connect, ping, proc_status



def proc_limits(pid):
    with open(f"/proc/{pid}/limits") as f:
        return {ln[:26].strip(): ln[26:].split()[:2] for ln in f.readlines()[1:]}


def oom_score_adj(pid):
    with open(f"/proc/{pid}/oom_score_adj") as f:
        return int(f.read())


def one_child(e):
    s = connect(e.endpoint())
    assert ping(s)  # the child is past its setup once it echoes
    (child,) = e.children()
    return s, child


def test_child_is_sandboxed(echod_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root to start echod with user = nobody")
    e = echod_factory(user='"nobody"')
    s, child = one_child(e)
    st = proc_status(child)
    nobody = pwd.getpwnam("nobody")
    assert st["Uid"].split() == [str(nobody.pw_uid)] * 4
    assert st["Gid"].split() == [str(nobody.pw_gid)] * 4
    assert st["Groups"].strip() == ""
    for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(st[cap], 16) == 0, (cap, st[cap])
    assert st["NoNewPrivs"] == "1"
    assert st["Seccomp"] == "2"  # filter mode
    lim = proc_limits(child)
    assert lim["Max processes"] == ["0", "0"]
    assert lim["Max open files"] == ["16", "16"]
    assert lim["Max core file size"] == ["0", "0"]
    # the kernel's OOM killer picks a child before the master
    assert oom_score_adj(child) == min(oom_score_adj(e.proc.pid) + 500, 1000)
    assert ping(s, os.urandom(100000))  # and it still echoes
    s.close()


def test_sandbox_off_for_debugging(echod_factory):
    e = echod_factory(sandbox="false")
    s, child = one_child(e)
    assert proc_status(child)["Seccomp"] == "0"
    s.close()


@pytest.mark.parametrize("sandbox", [True, False], ids=["sandbox-on", "sandbox-off"])
def test_forbidden_syscall_kills_only_that_child(echod_factory, sandbox):
    if not syscall_inject.supported():
        pytest.skip("syscall injection is implemented for x86_64 only")
    e = echod_factory(sandbox="true" if sandbox else "false")
    other = connect(e.endpoint())
    assert ping(other)
    victim = connect(e.endpoint())
    assert ping(victim)
    victim_pid = max(e.children())  # the later fork
    # make the child open a socket: nothing an echo loop ever does
    outcome = syscall_inject.inject_syscall(victim_pid, syscall_inject.SYS_socket, 2, 1, 0)
    if sandbox:
        assert outcome == ("killed", 31), outcome  # SIGSYS
        e.wait_log(rf"closed: killed-by-SIGSYS, \d+ bytes in, \d+ bytes out, [\d.]+ s, pid {victim_pid}")
        assert victim_pid not in e.children()
        e.wait_status(lambda st: " 1 crashed" in st)
    else:
        assert outcome[0] == "returned" and outcome[1] >= 0, outcome  # got an fd
        assert ping(victim)  # the unsandboxed child carries on
    # the master and every other connection are unaffected
    assert e.proc.poll() is None
    assert ping(other, os.urandom(50000))
    with connect(e.endpoint()) as s:
        assert ping(s)
    other.close()
    victim.close()


def test_child_may_limit_itself_but_not_the_master(echod_factory):
    """prlimit64 stays in the filter for a child's own RLIMIT_NPROC, on itself only: a child
    that tries the master's limits is killed, and the master's stay as they were."""
    if not syscall_inject.supported():
        pytest.skip("syscall injection is implemented for x86_64 only")
    e = echod_factory()
    s, child = one_child(e)
    before = proc_limits(e.proc.pid)["Max open files"]
    # prlimit64(0, RLIMIT_NOFILE, NULL, NULL): a no-op on itself
    assert syscall_inject.inject_syscall(child, syscall_inject.SYS_prlimit64, 0,
                                         syscall_inject.RLIMIT_NOFILE, 0, 0) == ("returned", 0)
    assert ping(s)
    outcome = syscall_inject.inject_syscall(child, syscall_inject.SYS_prlimit64, e.proc.pid,
                                            syscall_inject.RLIMIT_NOFILE, 0, 0)
    assert outcome == ("killed", 31), outcome  # SIGSYS
    e.wait_log(rf"closed: killed-by-SIGSYS, \d+ bytes in, \d+ bytes out, [\d.]+ s, pid {child}")
    assert proc_limits(e.proc.pid)["Max open files"] == before
    s.close()


def test_child_of_a_privileged_master_has_no_capabilities(echod_factory):
    """Whatever the master holds (CAP_NET_BIND_SERVICE under the unit, as here: an unprivileged
    user with it ambient), a child drops every capability set."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to start a master with a capability")
    e = echod_factory(user='""', wrapper=("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                          "--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"))
    assert int(proc_status(e.proc.pid)["CapEff"], 16) != 0
    s, child = one_child(e)
    st = proc_status(child)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(st[cap], 16) == 0, (cap, st[cap])
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"
    s.close()
