"""Small echo servers for echoc's and the checkers' tests: a correct one and deliberately broken ones.

Each server binds 127.0.0.1 (or ::1) port 0 and listens before the constructor returns, so a
client started afterwards always finds it (no sleep-and-hope). One thread per connection.

  echo      correct RFC 862: echoes everything; on EOF half-closes and closes
  flip      echoes, but the byte at stream offset `offset` is XORed with 0x20
  truncate  echoes the first `after` bytes, then half-closes (FIN) and discards the rest
  silent    reads and discards, never writes, never closes
  reset     echoes the first `after` bytes, then closes with SO_LINGER 0 (RST)
  delay     echoes each chunk after `delay` seconds (or after delays[i % len(delays)] for the
            i-th chunk, when `delays` is given)
  proxy     expects a PROXY v1/v2 header, records it (self.headers), then echoes
  reverse   answers the first chunk it reads with its bytes in reverse order, then half-closes
            (FIN) and discards the rest: a checker's expect step sees a wrong answer at once
"""
import os
import socket
import struct
import subprocess
import threading
import time

from conftest import ECHOC, sanitizer_env

PROXY_V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


class EchoServer:
    def __init__(self, behaviour="echo", family=socket.AF_INET, offset=1000, after=1000, delay=0.05, delays=None):
        self.behaviour = behaviour
        self.offset = offset
        self.after = after
        self.delay = delay
        self.delays = delays or [delay]
        self.headers = []
        self.connections = 0
        self.lock = threading.Lock()
        self.conns = []
        self.threads = []
        self.closing = False
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.host = "127.0.0.1" if family == socket.AF_INET else "::1"
        self.sock.bind((self.host, 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def endpoint(self):
        return self.host, self.port

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.acceptor.join(5)
        for t in list(self.threads):
            t.join(5)

    def _accept(self):
        while not self.closing:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.conns.append(c)
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, c):
        try:
            getattr(self, "_serve_" + self.behaviour)(c)
        except OSError:
            pass
        finally:
            with self.lock:
                if c in self.conns:
                    self.conns.remove(c)
            c.close()

    def _finish(self, c):
        """Our half of a clean end: FIN, then read to the client's EOF."""
        c.shutdown(socket.SHUT_WR)
        while c.recv(65536):
            pass

    def _serve_echo(self, c):
        while True:
            b = c.recv(65536)
            if not b:
                c.shutdown(socket.SHUT_WR)
                return
            c.sendall(b)

    def _serve_flip(self, c):
        pos = 0
        while True:
            b = c.recv(65536)
            if not b:
                c.shutdown(socket.SHUT_WR)
                return
            if pos <= self.offset < pos + len(b):
                i = self.offset - pos
                b = b[:i] + bytes([b[i] ^ 0x20]) + b[i + 1:]
            pos += len(b)
            c.sendall(b)

    def _echo_first(self, c):
        """Echo the first self.after bytes faithfully."""
        pos = 0
        while pos < self.after:
            b = c.recv(min(65536, self.after - pos))
            if not b:
                break
            pos += len(b)
            c.sendall(b)

    def _serve_truncate(self, c):
        self._echo_first(c)
        self._finish(c)

    def _serve_reverse(self, c):
        b = c.recv(65536)
        if b:
            c.sendall(b[::-1])
        self._finish(c)

    def _serve_silent(self, c):
        while c.recv(65536):
            pass
        while not self.closing:  # EOF from the client: still never answer nor close
            time.sleep(0.05)

    def _serve_reset(self, c):
        self._echo_first(c)
        time.sleep(0.05)  # let the client take the echo before the reset discards it
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def _serve_delay(self, c):
        i = 0
        while True:
            b = c.recv(65536)
            if not b:
                c.shutdown(socket.SHUT_WR)
                return
            time.sleep(self.delays[i % len(self.delays)])
            i += 1
            c.sendall(b)

    def _recv_exact(self, c, n, have=b""):
        while len(have) < n:
            b = c.recv(n - len(have))
            if not b:
                raise OSError("EOF inside the PROXY header")
            have += b
        return have

    def _serve_proxy(self, c):
        head = self._recv_exact(c, 16)
        if head.startswith(PROXY_V2_SIG):
            length = struct.unpack("!H", head[14:16])[0]
            header = self._recv_exact(c, 16 + length, head)
            rest = b""
        else:
            data = head
            while b"\r\n" not in data:
                b = c.recv(1)
                if not b:
                    raise OSError("EOF inside the PROXY header")
                data += b
            end = data.index(b"\r\n") + 2
            header, rest = data[:end], data[end:]
        with self.lock:
            self.headers.append(header)
        if rest:
            c.sendall(rest)
        self._serve_echo(c)


def full_backlog_listener():
    """A listener whose accept queue is full, so further SYNs are dropped: connects time out.

    Returns (listener, port, fillers, full): full says the kernel refused one more handshake;
    the caller closes the sockets."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    port = ls.getsockname()[1]
    # backlog 0 admits one completed connection; once it is queued the queue is full
    first = socket.create_connection(("127.0.0.1", port), timeout=5)
    fillers = [first]
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.settimeout(0.3)
    try:
        probe.connect(("127.0.0.1", port))
        full = False
    except (socket.timeout, OSError):
        full = True
    fillers.append(probe)
    return ls, port, fillers, full


def run_echoc(*args, input=None, stdin=None, timeout=60):
    """Run the real echoc; returns CompletedProcess with bytes stdout and text stderr."""
    env = sanitizer_env(dict(os.environ))
    r = subprocess.run([ECHOC, *map(str, args)], input=input,
                       stdin=stdin if input is None and stdin is not None else (None if input is not None else subprocess.DEVNULL),
                       capture_output=True, timeout=timeout, env=env)
    r.stderr = r.stderr.decode(errors="replace")
    return r
