"""Make a live process execute one system call of our choosing, via ptrace (x86_64 only).

The process is stopped inside a blocking system call (echod's children sit in ppoll); its
registers are pointed back at that `syscall` instruction with other arguments, it is
single-stepped through it, and its registers are restored. Only GETREGS/SETREGS are used, so
this works where gdb's inferior calls do not (they need the XSAVE register set)."""
import ctypes
import os
import platform

PTRACE_SINGLESTEP, PTRACE_GETREGS, PTRACE_SETREGS, PTRACE_ATTACH, PTRACE_DETACH = 9, 12, 13, 16, 17
WALL = 0x40000000
SYS_socket = 41
SYS_prlimit64 = 302
RLIMIT_NOFILE = 7

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


def inject_syscall(pid, nr, *args):
    """Returns ("returned", value) or ("killed", signal number)."""
    _ptrace(PTRACE_ATTACH, pid)
    os.waitpid(pid, WALL)
    saved = _Regs()
    _ptrace(PTRACE_GETREGS, pid, ctypes.byref(saved))
    regs = _Regs.from_buffer_copy(saved)
    regs.rax = nr
    for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
        setattr(regs, name, value)
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
