"""The Debian packages: what dpkg-buildpackage makes of the source tree, judged by
lintian and by their contents and maintainer scripts."""
import shutil
import subprocess

import pytest

from systest import run


def test_lintian_passes_with_no_error_warning_or_info(packages):
    if not shutil.which("lintian"):
        pytest.skip("lintian not installed")
    r = run(["lintian", "--fail-on", "error,warning,info", "--info", "--pedantic", packages["changes"]],
            timeout=300, check=False, stderr=subprocess.PIPE)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout


def contents(deb):
    out = run(["dpkg-deb", "-c", deb], timeout=30).stdout
    return {line.split()[-1].lstrip(".") for line in out.splitlines()}


def control_file(deb, name):
    return run(["dpkg-deb", "-I", deb, name], timeout=30, check=False).stdout


def test_echod_ships_daemon_units_conffile_and_man_pages(packages):
    deb = packages["debs"]["echod"]
    files = contents(deb)
    for path in ("/usr/sbin/echod", "/etc/echod/echod.conf",
                 # dh_installsystemd on bookworm acts only on units under /lib/systemd/system
                 "/lib/systemd/system/echod.service", "/lib/systemd/system/echod.socket",
                 "/usr/share/man/man8/echod.8.gz", "/usr/share/man/man5/echod.conf.5.gz"):
        assert path in files, path
    assert not any(f.startswith("/usr/bin/") for f in files)
    assert control_file(deb, "conffiles").split() == ["/etc/echod/echod.conf"]
    unit = run(["sh", "-c", f"dpkg-deb --fsys-tarfile {deb} | tar -xO ./lib/systemd/system/echod.service"],
               timeout=30).stdout
    assert "ExecStart=/usr/sbin/echod -D" in unit and "ExecStartPre=/usr/sbin/echod -t" in unit


def test_maintainer_scripts_enable_and_start_only_the_service(packages):
    deb = packages["debs"]["echod"]
    postinst = control_file(deb, "postinst")
    assert "deb-systemd-helper enable 'echod.service'" in postinst
    assert "deb-systemd-invoke $_dh_action 'echod.service'" in postinst
    # the socket is only started if the admin enabled it (deb-systemd-invoke checks)
    assert "deb-systemd-helper enable 'echod.socket'" not in postinst.split("was-enabled 'echod.socket'")[0]
    prerm = control_file(deb, "prerm")
    assert "stop 'echod.service'" in prerm and "stop 'echod.socket'" in prerm
    postrm = control_file(deb, "postrm")
    assert "deb-systemd-helper purge 'echod.service'" in postrm


def test_echoc_ships_the_client_and_its_man_page(packages):
    files = contents(packages["debs"]["echoc"])
    assert "/usr/bin/echoc" in files and "/usr/share/man/man1/echoc.1.gz" in files
    assert not any("echod" in f for f in files if not f.startswith("/usr/share/doc"))
