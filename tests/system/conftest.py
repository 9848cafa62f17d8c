"""System tests: the packages as users get them.

- the .debs are built with dpkg-buildpackage from a copy of the source tree;
- a Debian 12 root is debootstrapped once and cached under the build tree
  ($ECHOD_BUILD_DIR/system-root-cache), then copied for each run;
- the copy is booted with systemd-nspawn (host network) and driven with nsenter into its
  PID 1's namespaces: dpkg, systemctl, journalctl inside; echoc from the host.

Without root, or without the tools, the tests that need them are reported as skipped
with the reason. The container is powered off and removed even when a test fails.
"""
import os
import shutil
import socket
import tempfile

import pytest

import systest
from systest import BUILD, Skip


def skip_on(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except Skip as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def workdir():
    # under the build tree when we may write there, else in the system's temporary directory
    d = tempfile.mkdtemp(prefix="system-test-", dir=BUILD if os.access(BUILD, os.W_OK) else None)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def source(workdir):
    """One snapshot of the source tree, so that every build of a session is of the same
    source even while the tree is being edited."""
    d = os.path.join(workdir, "source")
    systest.copy_source(d)
    return d


@pytest.fixture(scope="session")
def packages(workdir, source):
    """The .changes of a normal build (the package's unit tests included) and its .debs."""
    d = os.path.join(workdir, "pkg")
    os.makedirs(d)
    changes = skip_on(systest.build_debs, d, source, log=os.path.join(workdir, "dpkg-buildpackage.log"))
    return {"changes": changes, "debs": systest.debs_of(changes)}


@pytest.fixture(scope="session")
def upgrade_packages(workdir, source):
    """The same source as a higher version, for an upgrade."""
    d = os.path.join(workdir, "pkg-upgrade")
    os.makedirs(d)
    changes = skip_on(systest.build_debs, d, source, version="0.1.0+systest1", check=False)
    return {"changes": changes, "debs": systest.debs_of(changes)}


def require_container_host(port=7):
    if os.geteuid() != 0:
        raise Skip("needs root: debootstrap, systemd-nspawn and nsenter")
    for tool in ("systemd-nspawn", "nsenter", "ss"):
        if not shutil.which(tool):
            raise Skip(f"{tool} not installed (systemd-container, util-linux, iproute2)")
    if not os.path.isdir("/sys/fs/cgroup") or not os.listdir("/sys/fs/cgroup"):
        raise Skip("no cgroup file system: systemd cannot run in a container here")
    if systest.port_in_use(port):
        raise Skip(f"TCP port {port} is in use on this host; the container's echod needs it "
                   "(the container shares the host's network)")


@pytest.fixture(scope="session")
def container(workdir, packages):
    """A booted Debian 12 with echod and echoc installed by dpkg inside it (so the
    maintainer scripts run against the live systemd)."""
    skip_on(require_container_host)
    pkgs = sorted(set(systest.BASE_PACKAGES) | set(systest.runtime_depends(packages["debs"].values())))
    cache = skip_on(systest.cached_root, pkgs)
    c = systest.Container(cache, os.path.join(workdir))
    try:
        c.boot()
        os.makedirs(os.path.join(c.dir, "root", "debs"))
        for deb in packages["debs"].values():
            shutil.copy(deb, os.path.join(c.dir, "root", "debs"))
        c.install_output = c.sh("dpkg -i /root/debs/echod_*.deb /root/debs/echoc_*.deb 2>&1",
                                timeout=120).stdout
        c.pristine_conf = c.read("/etc/echod/echod.conf")
        yield c
    finally:
        c.destroy()


@pytest.fixture
def service(container):
    """echod.service running on the shipped configuration, the socket unit stopped."""
    c = container
    if c.read("/etc/echod/echod.conf") != c.pristine_conf:
        c.write("/etc/echod/echod.conf", c.pristine_conf)
        c.sh("systemctl reset-failed echod.service; systemctl restart echod.service", check=False)
    if c.sh("systemctl is-active echod.socket", check=False).stdout.strip() != "inactive":
        c.sh("systemctl stop echod.socket echod.service; systemctl start echod.service")
    if c.sh("systemctl is-active echod.service", check=False).stdout.strip() != "active":
        c.sh("systemctl reset-failed echod.service; systemctl start echod.service")
    c.wait_active("echod.service")
    return c


def have_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False
