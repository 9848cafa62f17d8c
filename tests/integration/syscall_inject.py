"""Make a live process execute one system call of our choosing, via ptrace (x86_64 only).

The process is stopped inside a blocking system call (echod's children sit in ppoll); its
registers are pointed back at that `syscall` instruction with other arguments, it is
single-stepped through it, and its registers are restored. Only GETREGS/SETREGS are used, so
this works where gdb's inferior calls do not (they need the XSAVE register set)."""
import ctypes
import os
import platform
import struct

PTRACE_SINGLESTEP, PTRACE_GETREGS, PTRACE_SETREGS, PTRACE_ATTACH, PTRACE_DETACH = 9, 12, 13, 16, 17
WALL = 0x40000000
PTRACE_SECCOMP_GET_FILTER = 0x420C
SYS_socket = 41
SYS_prlimit64 = 302
RLIMIT_NOFILE = 7

# x86_64 system call numbers (asm/unistd_64.h)
SYS_open, SYS_mmap, SYS_mprotect, SYS_ioctl = 2, 9, 10, 16
SYS_getpid, SYS_connect, SYS_bind, SYS_socketpair, SYS_setsockopt = 39, 42, 49, 53, 54
SYS_clone, SYS_fork, SYS_vfork, SYS_kill, SYS_fcntl, SYS_creat = 56, 57, 58, 62, 72, 85
SYS_ptrace, SYS_setpgid, SYS_setsid, SYS_rt_sigqueueinfo, SYS_prctl = 101, 109, 112, 129, 157
SYS_tkill, SYS_clock_gettime, SYS_tgkill, SYS_openat, SYS_accept4, SYS_pipe2 = 200, 228, 234, 257, 288, 293
SYS_process_vm_writev, SYS_seccomp, SYS_memfd_create = 311, 317, 319
SYS_pidfd_send_signal, SYS_pidfd_open, SYS_clone3 = 424, 434, 435

# seccomp's actions, in the kernel's order of precedence (the lowest as a signed 32-bit value wins)
_ACTIONS = {0x80000000: "KILL_PROCESS", 0x00000000: "KILL_THREAD", 0x00030000: "TRAP", 0x00050000: "ERRNO",
            0x7FC00000: "USER_NOTIF", 0x7FF00000: "TRACE", 0x7FFC0000: "LOG", 0x7FFF0000: "ALLOW"}
AUDIT_ARCH_X86_64 = 0xC000003E

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


class _Regs(ctypes.Structure):  # struct user_regs_struct, x86_64
    _fields_ = [(n, ctypes.c_ulonglong) for n in (
        "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss "
        "fs_base gs_base ds es fs gs").split()]


def supported():
    return platform.machine() == "x86_64"


def _ptrace(req, pid, data=None):
    if _libc.ptrace(req, pid, None, data) == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace({req}): {os.strerror(err)}")


def _filters(pid):
    """The seccomp filters of a ptrace-stopped process, newest first, each a list of
    (code, jt, jf, k); None if the kernel will not show them (no CONFIG_CHECKPOINT_RESTORE)."""
    progs = []
    while True:
        n = _libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, ctypes.c_void_p(len(progs)), None)
        if n == -1:
            err = ctypes.get_errno()
            if err == 2 or (err == 124 and not progs):  # ENOENT: no more; EMEDIUMTYPE: no filter at all
                return progs
            return None
        buf = (ctypes.c_uint64 * n)()
        if _libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, ctypes.c_void_p(len(progs)), buf) != n:
            return None
        progs.append([struct.unpack("<HBBI", struct.pack("<Q", insn)) for insn in buf])


def _run_bpf(prog, data):
    """Classic BPF as seccomp runs it (the instructions libseccomp emits and a few more)."""
    a = x = pc = 0
    mem = [0] * 16
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        cls, src = code & 7, (x if code & 8 else k)
        if cls in (0, 1):  # LD, LDX: W|ABS (LD only), IMM, MEM, LEN
            v = {0x20: lambda: struct.unpack_from("<I", data, k)[0], 0x00: lambda: k, 0x60: lambda: mem[k],
                 0x80: lambda: len(data)}[code & 0xE0]()
            a, x = (v, x) if cls == 0 else (a, v)
        elif cls == 2:
            mem[k] = a
        elif cls == 3:
            mem[k] = x
        elif cls == 4:  # ALU
            op = code & 0xF0
            a = {0x00: lambda: a + src, 0x10: lambda: a - src, 0x20: lambda: a * src, 0x40: lambda: a | src,
                 0x50: lambda: a & src, 0x60: lambda: a << src, 0x70: lambda: a >> src, 0x80: lambda: -a,
                 0xA0: lambda: a ^ src}[op]() & 0xFFFFFFFF
        elif cls == 5:  # JMP
            op = code & 0xF0
            if op == 0:
                pc += k
            else:
                taken = {0x10: a == src, 0x20: a > src, 0x30: a >= src, 0x40: bool(a & src)}[op]
                pc += jt if taken else jf
        elif cls == 6:  # RET
            return a if code & 0x18 == 0x10 else k
        else:           # MISC: TAX, TXA
            if code & 0xF8 == 0:
                x = a
            else:
                a = x


def seccomp_verdict(pid, nr, args, ip=0):
    """What pid's seccomp filters would do with system call nr(args): "KILL_PROCESS", "ALLOW", ...;
    None if they cannot be read. The process must be ptrace-stopped."""
    progs = _filters(pid)
    if progs is None:
        return None
    args = [a & (2**64 - 1) for a in args] + [0] * (6 - len(args))
    data = struct.pack("<iIQ6Q", nr, AUDIT_ARCH_X86_64, ip, *args)
    action = min((_run_bpf(p, data) & 0xFFFF0000 for p in progs),
                 key=lambda v: v - 2**32 if v & 0x80000000 else v, default=0x7FFF0000)
    return _ACTIONS.get(action, hex(action))


def inject_syscall(pid, nr, *args, only_if_forbidden=False):
    """Returns ("returned", value) or ("killed", signal number).

    only_if_forbidden: for a call that must never really run should the filter let it through
    (kill(-1, SIGKILL) from a child running as root kills every root process on the machine):
    the process's filters are read and evaluated first (PTRACE_SECCOMP_GET_FILTER), and unless
    they kill the process for this call nothing is injected and ("not-injected", verdict) is
    returned, the verdict being the filter's action ("ALLOW", ...) or None if unreadable."""
    _ptrace(PTRACE_ATTACH, pid)
    os.waitpid(pid, WALL)
    saved = _Regs()
    _ptrace(PTRACE_GETREGS, pid, ctypes.byref(saved))
    if only_if_forbidden:
        try:
            verdict = seccomp_verdict(pid, nr, args, saved.rip)
        except (KeyError, IndexError, struct.error):  # an instruction we do not know: no verdict
            verdict = None
        if verdict not in ("KILL_PROCESS", "KILL_THREAD"):
            _ptrace(PTRACE_DETACH, pid)
            return "not-injected", verdict
    regs = _Regs.from_buffer_copy(saved)
    regs.rax = nr
    for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
        setattr(regs, name, value & (2**64 - 1))  # -1 as the register holds it
    regs.rip = saved.rip - 2     # back onto the 2-byte `syscall` instruction
    regs.orig_rax = 2**64 - 1    # not a restartable syscall any more
    _ptrace(PTRACE_SETREGS, pid, ctypes.byref(regs))
    _ptrace(PTRACE_SINGLESTEP, pid)
    _, status = os.waitpid(pid, WALL)
    if os.WIFSIGNALED(status):
        return "killed", os.WTERMSIG(status)
    if os.WIFSTOPPED(status) and os.WSTOPSIG(status) == 31:  # SIGSYS delivered, not yet fatal
        _ptrace(PTRACE_DETACH, pid, ctypes.c_void_p(31))
        return "killed", 31
    result = _Regs()
    _ptrace(PTRACE_GETREGS, pid, ctypes.byref(result))
    _ptrace(PTRACE_SETREGS, pid, ctypes.byref(saved))  # resume the interrupted call as if nothing happened
    _ptrace(PTRACE_DETACH, pid)
    return "returned", ctypes.c_longlong(result.rax).value
