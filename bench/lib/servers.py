"""The TCP echo servers under test: how each is started, found, pinned and stopped."""
import os
import re
import signal
import socket
import subprocess
import time

from .common import HOST, free_port

# in the order of the tables: the textbook (the reference of every ratio), the two ends of the scale
# (the cheapest fork per connection, no fork at all), echod, then the peers
SERVERS = ["baseline", "lean-fork", "epoll", "echod", "echod-ref",
           "openbsd-inetd", "tcpserver", "tcpsvd", "socat", "xinetd", "ncat"]
ECHODS = ("echod", "echod-ref")  # echod-ref: --reference-build, an earlier echod measured side by side
BOUNDS = ("lean-fork", "epoll")  # not peers: the limits of echod's design and of any design
PEERS = ["openbsd-inetd", "tcpserver", "tcpsvd", "socat", "xinetd", "ncat"]
INETD_TCP_PORT = 7  # openbsd-inetd's internal echo takes its port from /etc/services (echo = 7)
MAX_CONNS = 20000   # the connection limit given to servers that have one (tcpserver, tcpsvd, ncat): never binds

# how each server is run, for the report and the README: name → (command, notes)
COMMANDS = {
    "baseline": ("`bench/baseline/forkserver.c`, `cc -O2` (dynamic)",
                 "the textbook: Stevens' tcpserv04, accept, fork, read/write with a 4 KiB buffer, SIGCHLD reaping"),
    "lean-fork": ("`bench/baseline/forkserver.c`, `cc -O2 -static`",
                  "the same program linked statically: the cheapest fork per connection there is, the limit of echod's design"),
    "epoll": ("`bench/baseline/epollserver.c`, `cc -O2`",
              "one process, no fork: non-blocking, level-triggered epoll, accept4 in a loop, a 64 KiB buffer per "
              "connection; the ceiling of any design"),
    "echod": ("`echod -D -e -f CONF`", "the shipped `conf/echod.conf` with only `listen` changed; records to stderr, a file"),
    "openbsd-inetd": (f"`inetd -i -q 1024 -R 2147483647 CONF`, CONF `{HOST}:echo stream tcp4 nowait root internal`",
                      f"its internal TCP echo (a forked child per connection), on {HOST}:{INETD_TCP_PORT}: an internal "
                      "service must be named by its /etc/services name, so its port is always 7; `-R` lifts the "
                      "default limit of 256 invocations a minute, after which it stops the service for 10 minutes; "
                      "`-q 1024` the backlog (default 128). Run from its extracted .deb (it conflicts with xinetd)"),
    "tcpserver": (f"`tcpserver -H -R -l 0 -c {MAX_CONNS} -b 1024 {HOST} P cat`",
                  "ucspi-tcp: fork + exec of `cat` per connection; -H -R -l 0: no DNS or ident lookups; "
                  f"-c {MAX_CONNS}: the limit never binds (default 40)"),
    "tcpsvd": (f"`tcpsvd -l 0 -c {MAX_CONNS} -b 1024 {HOST} P cat`",
               f"ipsvd: fork + exec of `cat` per connection; no DNS lookup (that needs -h), -l 0: none for the local "
               f"name; -c {MAX_CONNS}: the limit never binds (default 30)"),
    "socat": ("`socat TCP-LISTEN:P,bind=127.0.0.1,fork,reuseaddr,backlog=1024 PIPE`",
              "`backlog=1024` as every other server (socat's default is 5)"),
    "xinetd": ("`xinetd -dontfork -f CONF`", "builtin `echo` (`type = INTERNAL UNLISTED`); `instances`, `per_source` "
               "UNLIMITED, `cps = 1000000 1` so its limits never throttle; records to a file"),
    "ncat": (f"`ncat -l 127.0.0.1 P -k --max-conns {MAX_CONNS} --exec /bin/cat`",
             "ncat relays through pipes to a `cat` per connection and ends the relay on the client's FIN without "
             "waiting for the echo: half-closing clients lose their echo"),
}


class Server:
    """One server under test, started in its own session so its whole tree can be found and stopped."""

    def __init__(self, name, bins, work, echod_overrides=None):
        self.name, self.bins, self.work = name, bins, work
        self.port = INETD_TCP_PORT if name == "openbsd-inetd" else free_port()
        self.overrides = echod_overrides or {}
        self.proc = None

    def command(self):
        p, w = str(self.port), self.work
        if self.name == "baseline":
            return [self.bins["forkserver"], HOST, p]
        if self.name == "lean-fork":
            return [self.bins["forkserver-static"], HOST, p]
        if self.name == "epoll":
            return [self.bins["epollserver"], HOST, p]
        if self.name in ECHODS:
            conf = os.path.join(w, f"echod-{self.port}.conf")
            text = open(self.bins["echod_conf"]).read()
            text = re.sub(r"(?m)^listen *=.*$", f'listen = {{"{HOST}:{p}"}}', text)
            for key, value in self.overrides.items():
                text, n = re.subn(rf"(?m)^{key} *=.*$", f"{key} = {value}", text)
                if n == 0:  # left at its default in the shipped file: set it
                    text += f"{key} = {value}\n"
            open(conf, "w").write(text)
            return [self.bins[self.name], "-D", "-e", "-f", conf]
        if self.name == "openbsd-inetd":
            conf = os.path.join(w, "inetd-tcp.conf")
            open(conf, "w").write(f"{HOST}:echo stream tcp4 nowait root internal\n")
            # -i: foreground; -q: backlog; -R: invocations a minute before it stops the service
            return [self.bins["inetd"], "-i", "-q", "1024", "-R", "2147483647", conf]
        if self.name == "tcpserver":
            return ["tcpserver", "-H", "-R", "-l", "0", "-c", str(MAX_CONNS), "-b", "1024", HOST, p, "cat"]
        if self.name == "tcpsvd":
            return ["tcpsvd", "-l", "0", "-c", str(MAX_CONNS), "-b", "1024", HOST, p, "cat"]
        if self.name == "socat":
            # backlog=1024 as every other server here (socat's default is 5)
            return ["socat", f"TCP-LISTEN:{p},bind={HOST},fork,reuseaddr,backlog=1024", "PIPE"]
        if self.name == "xinetd":
            conf = os.path.join(w, f"xinetd-{self.port}.conf")
            open(conf, "w").write(xinetd_conf("tcp", HOST, p, os.path.join(w, "xinetd-records.log")))
            return ["xinetd", "-dontfork", "-f", conf, "-pidfile", os.path.join(w, f"xinetd-{p}.pid")]
        if self.name == "ncat":
            return ["ncat", "-l", HOST, p, "-k", "--max-conns", str(MAX_CONNS), "--exec", "/bin/cat"]
        raise ValueError(self.name)

    def start(self):
        if self.name == "openbsd-inetd":
            self.wait_port_free()
        logf = open(os.path.join(self.work, f"{self.name}-{self.port}.log"), "w")
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                     start_new_session=True)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at startup, see {logf.name}: " + open(logf.name).read()[-300:])
            try:
                with socket.create_connection((HOST, self.port), timeout=1) as s:
                    s.sendall(b"x")  # no half-close: ncat would drop the echo (see README.md)
                    if s.recv(1) == b"x":
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not echo on port {self.port}: " + open(logf.name).read()[-500:])

    def wait_port_free(self, timeout=10):
        """Its port is fixed (7): wait until it can be bound (a killed instance's connections linger
        a moment in FIN_WAIT), and say so if something else has it."""
        deadline = time.time() + timeout
        while True:
            with socket.socket() as s:
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as inetd does
                    s.bind((HOST, self.port))
                    return
                except OSError as e:
                    if time.time() >= deadline:
                        raise RuntimeError(f"{HOST}:{self.port} (its internal echo's port) is taken: {e}")
            time.sleep(0.2)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the server and its children
            except ProcessLookupError:
                pass
            self.proc.wait()

    def tree(self):
        """pids of the server and all its descendants."""
        children = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    stat = open(f"/proc/{d}/stat").read()
                    ppid = int(stat.rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(d))
                except (OSError, IndexError, ValueError):
                    pass
        out, todo = [], [self.proc.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(children.get(p, []))
        return out

    def pss_kib(self):
        total = 0
        for pid in self.tree():
            try:
                for line in open(f"/proc/{pid}/smaps_rollup"):
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total

    def pin(self, cpus):
        """Set the CPU affinity of the whole tree; processes forked later inherit it."""
        for pid in self.tree():
            try:
                os.sched_setaffinity(pid, cpus)
            except OSError:
                pass

    def wait_idle(self, timeout=60):
        """Wait until every connection's process is gone (the tree is back to its idle size);
        False if that did not happen within `timeout` seconds."""
        # + ncat's helper; echod's spawner and its spare (a child forked ahead of need)
        idle = {"ncat": 2, "echod": 3, "echod-ref": 3}.get(self.name, 1)
        deadline = time.time() + timeout
        while len(self.tree()) > idle:
            if time.time() >= deadline:
                return False
            time.sleep(0.1)
        return True


XINETD_CONF = """# written by bench/run: xinetd's builtin {what}
defaults
{{
        log_type        = FILE {log}
        instances       = UNLIMITED
        per_source      = UNLIMITED
        cps             = 1000000 1
}}
service echo
{{
        id              = {id}
        type            = INTERNAL UNLISTED
        socket_type     = {socket_type}
        protocol        = {protocol}
        wait            = {wait}
        user            = root
        bind            = {host}
        port            = {port}
        instances       = UNLIMITED
        per_source      = UNLIMITED
        cps             = 1000000 1
}}
"""
XINETD_KINDS = {
    "tcp": dict(what="echo on a loopback port", id="echo-stream", socket_type="stream", protocol="tcp", wait="no"),
    "udp": dict(what="UDP echo", id="echo-dgram", socket_type="dgram", protocol="udp", wait="yes"),
}


def xinetd_conf(kind, host, port, log):
    """xinetd's configuration for its builtin TCP or UDP echo, every limit lifted."""
    return XINETD_CONF.format(host=host, port=port, log=log, **XINETD_KINDS[kind])
