"""debian/tests, the autopkgtest a Debian maintainer runs, run for real: Debian 12's autopkgtest,
installed from the mirror inside the booted container, runs it with the null runner on the .debs
under test and a copy of the source tree.

Why the null runner, inside the container: autopkgtest's own container runners (lxc, podman,
unshare) would have to build their testbed images from the network and nest a container; the
booted container already is an expendable testbed with systemd as PID 1, the packages installed
by dpkg with their maintainer scripts run against it. That is what 'Restrictions:
isolation-container' asks for, so the test ignores that restriction
(--ignore-restrictions=isolation-container, which autopkgtest(1) suggests for the null runner on
an expendable testbed). The test is skipped, with the reason, when the mirror cannot be reached
to install autopkgtest."""
import os
import re
import shutil

from conftest import have_ipv6_loopback, skip_on

SRC = "/root/autopkgtest-src"
OUT = "/root/autopkgtest-out"


def test_debian_tests_pass_under_autopkgtest_null_runner(service, source, packages):
    c = service
    skip_on(c.apt_install, ["autopkgtest"])
    host_src = os.path.join(c.dir, SRC.lstrip("/"))
    shutil.rmtree(host_src, ignore_errors=True)
    shutil.copytree(source, host_src, symlinks=True)
    debs = " ".join(f"/root/debs/{os.path.basename(p)}" for p in sorted(packages["debs"].values()))
    r = c.sh(f"rm -rf {OUT}; autopkgtest --ignore-restrictions=isolation-container --output-dir={OUT} "
             f"{debs} {SRC}/ -- null", check=False, timeout=900)
    summary = c.sh(f"cat {OUT}/summary", check=False).stdout
    log = c.sh(f"cat {OUT}/log", check=False).stdout
    # exit status 0: every test passed (2 would be: some were skipped; 4: one failed)
    assert r.returncode == 0, f"autopkgtest exited {r.returncode}\nsummary:\n{summary}\nlog:\n{log[-6000:]}"
    assert re.search(r"^service\s+PASS$", summary, re.M), summary
    assert "ok: 1048576 bytes echoed intact by 127.0.0.1 port 7" in log, log[-4000:]
    if have_ipv6_loopback():
        assert "ok: 1048576 bytes echoed intact by ::1 port 7" in log, log[-4000:]
    # the test ran as it would for a maintainer, not beside the service it checks
    assert c.sh("systemctl is-active echod.service", check=False).stdout.strip() == "active"
