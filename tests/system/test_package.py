"""The Debian packages: what dpkg-buildpackage makes of the source tree, judged by
lintian and by their contents and maintainer scripts."""
import glob
import os
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


def test_lintian_passes_on_the_source_package_with_its_autopkgtest(workdir, source):
    """debian/tests/control and the rest of the source package, which the binary build above
    does not show lintian."""
    for tool in ("lintian", "dpkg-source"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed")
    d = os.path.join(workdir, "source-package")
    os.makedirs(d)
    shutil.copytree(source, os.path.join(d, "echod"), symlinks=True)
    run(["dpkg-source", "-b", "echod"], timeout=120, cwd=d)
    dsc = glob.glob(os.path.join(d, "echod_*.dsc"))
    assert len(dsc) == 1, dsc
    r = run(["lintian", "--fail-on", "error,warning,info", "--info", "--pedantic", dsc[0]],
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


def test_metrics_timer_is_shipped_disabled_and_stopped_on_removal(packages):
    deb = packages["debs"]["echod"]
    files = contents(deb)
    for path in ("/lib/systemd/system/echod-metrics.service", "/lib/systemd/system/echod-metrics.timer",
                 "/usr/libexec/echod/echod-metrics"):
        assert path in files, path
    postinst = control_file(deb, "postinst")
    # enabled only again after an upgrade, if the admin had enabled it
    assert "deb-systemd-helper enable 'echod-metrics.timer'" not in \
        postinst.split("was-enabled 'echod-metrics.timer'")[0]
    # started only if enabled: deb-systemd-invoke starts no disabled or static unit
    assert "deb-systemd-invoke $_dh_action 'echod-metrics.service' 'echod-metrics.timer'" in postinst
    prerm = control_file(deb, "prerm")
    assert "stop 'echod-metrics.service' 'echod-metrics.timer'" in prerm
    postrm = control_file(deb, "postrm")
    assert "rm -f /var/lib/prometheus/node-exporter/echod.prom" in postrm
    assert "deb-systemd-helper purge 'echod-metrics.timer'" in postrm
    unit = run(["sh", "-c", f"dpkg-deb --fsys-tarfile {deb} | tar -xO ./lib/systemd/system/echod-metrics.service"],
               timeout=30).stdout
    assert "ExecStart=/usr/libexec/echod/echod-metrics /var/lib/prometheus/node-exporter/echod.prom" in unit
    helper = run(["sh", "-c", f"dpkg-deb --fsys-tarfile {deb} | tar -xO ./usr/libexec/echod/echod-metrics"],
                 timeout=30).stdout
    assert "/usr/sbin/echod status --format=prometheus" in helper and "@" not in helper


def test_echoc_ships_the_client_and_its_man_page(packages):
    files = contents(packages["debs"]["echoc"])
    assert "/usr/bin/echoc" in files and "/usr/share/man/man1/echoc.1.gz" in files
    assert not any("echod" in f for f in files if not f.startswith("/usr/share/doc"))
