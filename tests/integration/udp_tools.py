"""Tools for the UDP tests that need a network of their own: network namespaces joined by veth
pairs (created with unique names, always removed), sockets opened inside a namespace from this
very process (setns(2) on the calling thread only, for the moment a socket is made), spoofed IPv4
datagrams over a raw socket, paced sending, and nft counters that count what arrives where.

Nothing here touches an address outside the namespaces it made."""
import contextlib
import ctypes
import json
import os
import socket
import struct
import subprocess
import threading
import time

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_setns_lock = threading.Lock()


def run(*cmd, ns=None, check=True, timeout=30, input=None):
    """A command (in namespace ns if given), bounded; its output as text."""
    if ns:
        cmd = ("ip", "netns", "exec", ns) + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


@contextlib.contextmanager
def inside(ns):
    """Run the body with this thread in network namespace ns: sockets made there belong to ns
    for good (and can be used from any thread afterwards). Keep the body to socket creation."""
    with _setns_lock:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)
            os.close(target)


def udp_socket(ns, bind=None, family=None, timeout=5.0):
    """A UDP socket made in namespace ns, bound to bind (host, port) if given."""
    if family is None:
        family = socket.AF_INET6 if bind and ":" in bind[0] else socket.AF_INET
    with inside(ns):
        s = socket.socket(family, socket.SOCK_DGRAM)
    if bind:
        s.bind(bind)
    s.settimeout(timeout)
    return s


class Net:
    """Network namespaces and veth pairs, named after a tag unique to this run; remove() takes
    away everything made (also what a half-finished setup made)."""

    def __init__(self, tag):
        self.tag = tag
        self.namespaces = []

    def ns(self, name):
        full = f"eudp-{name}-{self.tag}"
        run("ip", "netns", "del", full, check=False)  # a leftover of a run killed hard
        run("ip", "netns", "add", full)
        self.namespaces.append(full)
        run("ip", "link", "set", "lo", "up", ns=full)
        # sysctls of a new namespace are the kernel's defaults, not the host's: set what we rely on
        for k in ("all", "default"):
            run("sysctl", "-qw", f"net.ipv4.conf.{k}.rp_filter=0", ns=full)
            run("sysctl", "-qw", f"net.ipv6.conf.{k}.accept_dad=0", ns=full)
        return full

    def veth(self, ns_a, dev_a, ns_b, dev_b):
        """A veth pair: dev_a in ns_a, dev_b in ns_b, both up. Returns (dev_a, dev_b)."""
        run("ip", "link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b)
        for ns, dev in ((ns_a, dev_a), (ns_b, dev_b)):
            run("sysctl", "-qw", f"net.ipv4.conf.{dev}.rp_filter=0", ns=ns)
            run("ip", "link", "set", dev, "up", ns=ns)
        return dev_a, dev_b

    def addr(self, ns, dev, *cidrs):
        for c in cidrs:
            extra = ("nodad",) if ":" in c else ()
            run("ip", "addr", "add", c, "dev", dev, *extra, ns=ns)

    def remove(self):
        # deleting a namespace deletes its veth ends, and so their peers
        for ns in reversed(self.namespaces):
            run("ip", "netns", "del", ns, check=False)
        self.namespaces = []


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp4_packet(src, sport, dst, dport, payload):
    """An IPv4 datagram with any source we like; the kernel fills in the IP checksum, id and
    total length of a raw socket's packet (raw(7)); the UDP checksum is ours."""
    length = 8 + len(payload)
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    pseudo = s + d + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    csum = checksum(pseudo + struct.pack("!HHHH", sport, dport, length, 0) + payload) or 0xFFFF
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0, 64, socket.IPPROTO_UDP, 0, s, d)
    return ip + struct.pack("!HHHH", sport, dport, length, csum) + payload


class Spoofer:
    """A raw IPv4 socket in namespace ns that sends UDP datagrams from any source."""

    def __init__(self, ns):
        with inside(ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self.sent = 0
        self._built = {}

    def send(self, src, sport, dst, dport, payload):
        key = (src, sport, dst, dport, payload)
        packet = self._built.get(key)
        if packet is None:  # built once: the sender's own CPU is not what is measured
            packet = self._built[key] = udp4_packet(*key)
        self.sock.sendto(packet, (dst, 0))
        self.sent += 1

    def paced(self, packets, rate, seconds, stop=None):
        """Send packets (an endless iterator of (src, sport, dst, dport, payload)) at rate per
        second for seconds (in 5 ms steps). Returns (sent, t_first, t_last) in time.monotonic()."""
        sent, total = 0, int(rate * seconds)
        t0 = time.monotonic()
        last = t0
        while True:
            now = time.monotonic()
            if stop is not None and stop.is_set():
                return sent, t0, last
            due = min(int((now - t0) * rate) + 1, total)
            while sent < due:
                self.send(*next(packets))
                sent += 1
            last = time.monotonic()
            if sent >= total:
                return sent, t0, last
            time.sleep(0.005)

    def close(self):
        self.sock.close()


class Counters:
    """nft counters in namespace ns, in a table of their own: add(name, match) counts the packets
    arriving (prerouting, before anything else) that match the nft expression; drop=True also
    drops them there (so that a spoofed victim's address needs no socket and draws no ICMP)."""

    def __init__(self, ns, table):
        self.ns, self.table = ns, table
        run("nft", "add", "table", "inet", table, ns=ns)
        run("nft", "add", "chain", "inet", table, "pre",
            "{ type filter hook prerouting priority -300 ; policy accept ; }", ns=ns)

    def add(self, name, match, drop=False):
        run("nft", "add", "counter", "inet", self.table, name, ns=self.ns)
        run("nft", "add", "rule", "inet", self.table, "pre", *match.split(), "counter", "name", name,
            *(("drop",) if drop else ()), ns=self.ns)

    def packets(self, name):
        out = json.loads(run("nft", "-j", "list", "counter", "inet", self.table, name, ns=self.ns))
        for item in out["nftables"]:
            if "counter" in item:
                return item["counter"]["packets"]
        raise AssertionError(f"no counter {name} in {out}")

    def remove(self):
        run("nft", "delete", "table", "inet", self.table, ns=self.ns, check=False)


class EchoPeer:
    """A UDP service that answers everything (like the echo or chargen of old): a socket in ns
    bound to addr:port, served by a thread that sends each datagram back to its source and counts
    them."""

    def __init__(self, ns, addr, port):
        self.sock = udp_socket(ns, (addr, port), timeout=0.05)
        self.received = []  # (time.monotonic(), source)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data, src = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            self.received.append((time.monotonic(), src))
            try:
                self.sock.sendto(data, src)
            except OSError:
                pass

    def stop(self):
        """Stop answering; what was queued but not read yet is counted too. Returns the count."""
        self._stop.set()
        self._thread.join(5)
        self.sock.setblocking(False)
        while True:
            try:
                _, src = self.sock.recvfrom(65536)
            except BlockingIOError:
                break
            self.received.append((time.monotonic(), src))
        self.sock.close()
        return len(self.received)
