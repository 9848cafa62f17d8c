"""echod-metrics.timer and echod-metrics.service under the real systemd of the booted Debian 12:
shipped disabled, scheduled every 15 s, sandboxed as the unit says and still able to ask echod;
a failed query leaves no file; and, once 'echod status --format=prometheus' exists, the counters
of known traffic read back from prometheus-node-exporter's /metrics (installed in the container
from the mirror, listening on a free loopback port of the shared network).

The tests that need the Prometheus exposition skip, naming the reason, while echod rejects
'status --format=prometheus'; their output is never made up here."""
import json
import os
import re
import socket
import time
import urllib.request

import pytest

from conftest import skip_on
from systest import echo_once, wait_until

CONF = "/etc/echod/echod.conf"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
PROM = f"{TEXTFILE_DIR}/echod.prom"
TIMER = "echod-metrics.timer"
UNIT = "echod-metrics.service"
NODE_EXPORTER_DEFAULTS = "/etc/default/prometheus-node-exporter"


# ---- helpers ---------------------------------------------------------------------------------

def prometheus_format(c):
    """Skips the calling test unless the installed echod answers 'status --format=prometheus'
    (echod.service must be running). Returns its answer."""
    r = c.sh("echod status --format=prometheus", check=False)
    if r.returncode == 2:  # usage: the option is not known to this echod
        pytest.skip("'echod status --format=prometheus' is rejected by the echod under test (exit 2: "
                    f"{r.stderr.strip().splitlines()[0] if r.stderr.strip() else 'usage'}): the Prometheus "
                    "exposition is not in this tree yet; this test runs once it is")
    assert r.returncode == 0 and r.stdout.strip(), f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def set_key(c, key, value):
    text = c.read(CONF)
    new, n = re.subn(rf"(?m)^{key}\s*=.*$", f"{key} = {value}", text)
    assert n == 1, f"{key} not set once in {CONF}"
    c.write(CONF, new)


def status_json(c):
    return json.loads(c.sh("echod status --json").stdout)


def run_starts(c):
    """When echod-metrics.service last started its command (CLOCK_MONOTONIC, microseconds;
    0 = never)."""
    return int(c.show(UNIT, "ExecMainStartTimestampMonotonic") or 0)


def leftovers(c):
    """Temporary files of echod-metrics in the textfile directory."""
    return c.sh(f"ls -A {TEXTFILE_DIR} | grep '^\\.echod\\.prom\\.' || true").stdout.split()


def free_loopback_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node_exporter(c):
    """prometheus-node-exporter installed (from the mirror; skipped if unreachable) and
    answering on a loopback port of its own: the container shares the host's network, where
    9100 may be taken. Returns the URL of its /metrics."""
    port = getattr(c, "node_exporter_port", None)
    if port is None:
        port = free_loopback_port()
        c.write(NODE_EXPORTER_DEFAULTS, f'ARGS="--web.listen-address=127.0.0.1:{port}"\n')
        skip_on(c.apt_install, ["prometheus-node-exporter"])
        c.node_exporter_port = port
    c.sh("systemctl start prometheus-node-exporter.service")
    url = f"http://127.0.0.1:{port}/metrics"
    wait_until(f"node_exporter to answer on {url}", lambda: scrape(url), 30, interval=0.2)
    return url


def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        return r.read().decode()


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text, prefix=""):
    """{(name, frozenset of (label, value)): value} of the samples named prefix..."""
    out = {}
    for line in text.splitlines():
        if not line.startswith(prefix) or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def mtime_of(got, name):
    """node_textfile_mtime_seconds of the file name: labelled with its path (node_exporter 1.5,
    Debian 12's) or, as other versions may, with only its name."""
    for (metric, labels), value in got.items():
        file = dict(labels).get("file", "")
        if metric == "node_textfile_mtime_seconds" and (file == name or file.endswith("/" + name)):
            return value
    return None


def types(text):
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def refused_from(source):
    """A connection from source that echod closes or resets without a byte."""
    s = socket.socket()
    try:
        s.settimeout(10)
        s.bind((source, 0))
        s.connect(("127.0.0.1", 7))
        try:
            return s.recv(1) == b""
        except ConnectionResetError:
            return True
    finally:
        s.close()


@pytest.fixture
def metrics(service):
    """The service running on the shipped configuration; afterwards the timer is disabled
    again, the file removed and the textfile directory back where it was."""
    c = service
    yield c
    c.sh(f"systemctl disable --now {TIMER}; systemctl stop {UNIT}; systemctl reset-failed {UNIT}", check=False)
    c.sh(f"[ -d {TEXTFILE_DIR} ] || mv {TEXTFILE_DIR}.away {TEXTFILE_DIR}; rm -f {PROM}", check=False)
    c.sh("systemctl stop prometheus-node-exporter.service", check=False)  # started again when needed
    if c.read(CONF) != c.pristine_conf:
        c.write(CONF, c.pristine_conf)
        c.sh("systemctl restart echod.service", check=False)
    c.sh("systemctl is-active --quiet echod.service || systemctl start echod.service", check=False)


# ---- as shipped ----------------------------------------------------------------------------

def test_timer_and_service_are_shipped_disabled_never_run_and_scheduled_every_15_s(metrics):
    c = metrics
    assert c.sh(f"systemctl is-enabled {TIMER}", check=False).stdout.strip() == "disabled"
    assert c.sh(f"systemctl is-active {TIMER}", check=False).stdout.strip() == "inactive"
    assert c.sh(f"systemctl is-enabled {UNIT}", check=False).stdout.strip() == "static"
    assert run_starts(c) == 0, "echod-metrics.service ran although nobody enabled its timer"
    assert c.sh(f"test -e {PROM}", check=False).returncode != 0
    timers = c.show(TIMER, "TimersMonotonic")
    assert re.search(r"OnBootUSec=15s\b", timers) and re.search(r"OnUnitActiveUSec=15s\b", timers), timers
    assert c.show(TIMER, "AccuracyUSec") == "1s"
    assert c.show(TIMER, "Unit") == UNIT
    assert c.show(UNIT, "Type") == "oneshot"
    assert c.show(UNIT, "User") == ""  # root: see the unit's comment
    assert c.show(UNIT, "CapabilityBoundingSet") == "cap_dac_override"
    assert c.show(UNIT, "ReadWritePaths") == TEXTFILE_DIR
    assert c.show(UNIT, "ProtectSystem") == "strict"
    assert c.show(UNIT, "PrivateNetwork") == "yes"
    r = c.sh(f"systemd-analyze verify --man=no {TIMER} {UNIT}", check=False)
    assert r.returncode == 0 and "echod-metrics" not in r.stdout + r.stderr, r.stdout + r.stderr
    out = c.sh(f"systemd-analyze security --no-pager {UNIT}", check=False).stdout
    m = re.search(rf"Overall exposure level for {UNIT}: (\d+\.\d+)", out)
    assert m and float(m.group(1)) <= 1.5, out[-3000:]  # 0.9 "SAFE" on systemd 252


def with_command(c, *lines):
    """echod-metrics.service, as installed, with its command (and the settings in lines)
    replaced by a runtime drop-in, started once (oneshot: 'systemctl start' returns when the
    command has ended). Returns (start exit status, the command's journal output)."""
    dropin = f"/run/systemd/system/{UNIT}.d"
    c.sh(f"mkdir -p {dropin}")
    c.write(f"{dropin}/systest.conf", "[Service]\nExecStart=\n" + "".join(line + "\n" for line in lines))
    try:
        c.sh(f"systemctl daemon-reload; systemctl reset-failed {UNIT}", check=False)
        cursor = c.cursor()
        r = c.sh(f"systemctl start {UNIT}", check=False)
        return r.returncode, c.messages(cursor, unit=UNIT)
    finally:
        c.sh(f"rm -rf {dropin}; systemctl daemon-reload; systemctl reset-failed {UNIT}", check=False)


def test_service_sandbox_reaches_echods_control_socket_only_through_cap_dac_override(metrics):
    """The unit as installed, around a plain 'echod status' (which every echod answers): it
    answers; without CAP_DAC_OVERRIDE the socket (mode 0600, echod's dynamic user) refuses,
    which is why the unit keeps that one capability. And only the textfile directory is
    writable."""
    c = metrics
    c.sh(f"mkdir -p {TEXTFILE_DIR}")  # prometheus-node-exporter's: the unit's condition
    rc, log = with_command(c, "ExecStart=/usr/sbin/echod status")
    assert rc == 0 and "LISTENER" in log, log
    rc, log = with_command(c, "ExecStart=/usr/sbin/echod status", "CapabilityBoundingSet=~CAP_DAC_OVERRIDE")
    assert rc != 0 and "cannot ask /run/echod/control: Permission denied" in log, log
    rc, log = with_command(c, f"ExecStart=/bin/mktemp {TEXTFILE_DIR}/.systest.XXXXXX",
                           "ExecStart=/bin/sh -c '! touch /var/lib/systest-probe'")
    c.sh(f"rm -f {TEXTFILE_DIR}/.systest.*")
    assert rc == 0, log
    assert c.sh("test -e /var/lib/systest-probe", check=False).returncode != 0


# ---- failure: no file ----------------------------------------------------------------------

def test_a_failed_query_removes_the_file_and_leaves_no_temporary_one(metrics):
    c = metrics
    c.sh(f"mkdir -p {TEXTFILE_DIR}")
    c.sh("systemctl stop echod.service")
    # what 'echod status --format=prometheus' itself says now: 1 (no answer: echod is stopped),
    # or 2 from an echod that does not know the option yet; the run must fail the same way
    expected = c.sh("echod status --format=prometheus", check=False).returncode
    assert expected in (1, 2), expected
    c.write(PROM, "# a file left by an earlier run (system test)\n")
    cursor = c.cursor()
    r = c.sh(f"systemctl start {UNIT}", check=False)
    assert r.returncode != 0
    assert c.show(UNIT, "Result") == "exit-code"
    assert c.show(UNIT, "ExecMainStatus") == str(expected)
    assert c.sh(f"test -e {PROM}", check=False).returncode != 0, "the old file was left"
    assert leftovers(c) == []
    log = c.messages(cursor, unit=UNIT)
    assert f"no answer from echod (exit status {expected}); removed {PROM}" in log, log
    if expected == 1:
        assert "is echod running?" in log, log


def test_without_the_textfile_directory_the_run_is_skipped_not_failed(metrics):
    c = metrics
    c.sh(f"mkdir -p {TEXTFILE_DIR}; mv {TEXTFILE_DIR} {TEXTFILE_DIR}.away")
    try:
        c.sh(f"systemctl reset-failed {UNIT}", check=False)
        c.sh(f"systemctl start {UNIT}")  # exit 0: a condition that fails is no error
        assert c.show(UNIT, "ConditionResult") == "no"
        assert c.sh(f"systemctl is-failed {UNIT}", check=False).stdout.strip() != "failed"
        assert c.sh(f"test -e {TEXTFILE_DIR}", check=False).returncode != 0
    finally:
        c.sh(f"mv {TEXTFILE_DIR}.away {TEXTFILE_DIR}")


# ---- the timer -----------------------------------------------------------------------------

def test_timer_runs_the_service_every_15_s_also_after_failed_runs(metrics):
    """Whatever each run's outcome (today, until echod speaks Prometheus, every run fails),
    the timer keeps its 15 s period and leaves either a complete file or none."""
    c = metrics
    c.sh(f"mkdir -p {TEXTFILE_DIR}; systemctl reset-failed {UNIT}", check=False)
    before = run_starts(c)
    c.sh(f"systemctl enable --now {TIMER}")
    assert c.sh(f"systemctl is-enabled {TIMER}").stdout.strip() == "enabled"
    starts = [before]

    def next_run():
        now = run_starts(c)
        return now if now != starts[-1] else None

    for _ in range(3):
        starts.append(wait_until("the next run of echod-metrics.service", next_run, 45, interval=0.2))
    gaps = [(b - a) / 1e6 for a, b in zip(starts[1:], starts[2:])]
    assert all(14.5 <= g <= 17.0 for g in gaps), f"runs {gaps} s apart, not 15 s"
    # the last run over (while it runs, Result is reset to 'success')
    wait_until("the run to end", lambda: c.show(UNIT, "ActiveState") in ("inactive", "failed"), 15, interval=0.1)
    supported = c.sh("echod status --format=prometheus >/dev/null 2>&1", check=False).returncode == 0
    result = c.show(UNIT, "Result")
    if supported:
        assert result == "success"
        assert c.sh(f"stat -c '%a %U %G' {PROM}").stdout.split() == ["644", "root", "root"]
    else:
        assert result == "exit-code"
        assert c.sh(f"test -e {PROM}", check=False).returncode != 0
    assert leftovers(c) == []


# ---- known traffic, read back from node_exporter --------------------------------------------

def test_node_exporter_reads_the_directory_the_service_writes(metrics):
    """node_exporter as packaged reads *.prom files from the directory the unit writes (a probe
    file of this test's own, not echod's), and ignores the names of the unit's temporary files."""
    c = metrics
    url = start_node_exporter(c)
    c.write(f"{TEXTFILE_DIR}/systest.prom", "# TYPE systest_textfile_probe gauge\nsystest_textfile_probe 42\n")
    c.write(f"{TEXTFILE_DIR}/.echod.prom.XXXXXX", "systest_textfile_hidden 1\n")
    try:
        got = samples(scrape(url))
        assert got[("systest_textfile_probe", frozenset())] == 42
        # Debian 12's node_exporter (1.5) names the file by its path
        assert mtime_of(got, "systest.prom") is not None, [k for k in got if k[0].startswith("node_textfile")]
        assert got[("node_textfile_scrape_error", frozenset())] == 0
        assert not any(name == "systest_textfile_hidden" for name, _ in got)
    finally:
        c.sh(f"rm -f {TEXTFILE_DIR}/systest.prom {TEXTFILE_DIR}/.echod.prom.XXXXXX")


def test_node_exporter_shows_the_counters_of_known_traffic_refreshed_by_the_timer(metrics):
    c = metrics
    prometheus_format(c)
    url = start_node_exporter(c)
    c.sh(f"systemctl disable --now {TIMER}; rm -f {PROM}")
    # fresh counters; a deny rule for one loopback source, to be refused by reason 'acl'
    set_key(c, "deny", '{"127.0.0.2/32"}')
    c.sh("systemctl restart echod.service")
    c.wait_active("echod.service")
    assert status_json(c)["totals"]["accepted"] == 0

    sizes = [1, 10, 100, 1000, 65536]
    for n in sizes:
        payload = os.urandom(n)
        assert echo_once("127.0.0.1", payload)[0] == payload
    for _ in range(3):
        assert refused_from("127.0.0.2")
    total = sum(sizes)

    def settled(accepted, refused, nbytes):
        """Every connection gone and counted (echod status --json), so the counters are final."""
        def check():
            s = status_json(c)
            t = s["totals"]
            assert (t["active"] == 0 and t["accepted"] == accepted and s["refused"]["acl"] == refused
                    and t["bytes_in"] == nbytes and t["bytes_out"] == nbytes), (t, s["refused"])
            return True
        wait_until("echod to have recorded the traffic", check, 20, interval=0.1)

    settled(len(sizes), 3, total)
    c.sh(f"systemctl enable --now {TIMER}")
    wait_until(f"{PROM} to be written", lambda: c.sh(f"test -s {PROM}", check=False).returncode == 0, 30,
               interval=0.2)

    def check_exposition(accepted, refused_acl, nbytes):
        text = scrape(url)
        got = samples(text, "echod_")
        assert got, "no echod_* series in node_exporter's /metrics"
        assert got[("echod_connections_accepted_total", frozenset())] == accepted, got
        refused = {dict(k[1]).get("reason"): v for k, v in got.items() if k[0] == "echod_connections_refused_total"}
        assert refused.get("acl") == refused_acl, refused
        assert all(v == 0 for reason, v in refused.items() if reason != "acl"), refused
        assert got[("echod_received_bytes_total", frozenset())] == nbytes, got
        assert got[("echod_sent_bytes_total", frozenset())] == nbytes, got
        kinds = types(text)
        for name in ("echod_connections_accepted_total", "echod_connections_refused_total",
                     "echod_received_bytes_total", "echod_sent_bytes_total"):
            assert kinds.get(name) == "counter", f"{name}: # TYPE {kinds.get(name)}"
        all_samples = samples(text, "node_textfile_")
        assert all_samples[("node_textfile_scrape_error", frozenset())] == 0
        assert mtime_of(all_samples, "echod.prom") is not None
        return text

    check_exposition(len(sizes), 3, total)
    assert c.sh(f"stat -c '%a %U %G' {PROM}").stdout.split() == ["644", "root", "root"]
    assert leftovers(c) == []

    # more traffic; the next run of the timer (15 s) refreshes the file
    assert echo_once("127.0.0.1", b"refresh")[0] == b"refresh"
    settled(len(sizes) + 1, 3, total + 7)
    settled_at = float(c.sh("date +%s.%N").stdout)
    wait_until(f"{PROM} to be rewritten after the traffic",
               lambda: float(c.sh(f"stat -c %.9Y {PROM}").stdout) > settled_at, 40, interval=0.2)
    check_exposition(len(sizes) + 1, 3, total + 7)

    # echod stopped: the next run fails and removes the file, and node_exporter shows no echod_*
    c.sh("systemctl stop echod.service")
    wait_until(f"the failed run to remove {PROM}", lambda: c.sh(f"test -e {PROM}", check=False).returncode != 0,
               40, interval=0.2)
    text = scrape(url)
    assert not samples(text, "echod_"), "echod_* series exposed while echod is stopped"
    assert mtime_of(samples(text, "node_textfile_"), "echod.prom") is None
    # ...and the timer goes on: echod back, fresh counters, a file again
    c.sh("systemctl start echod.service")
    c.wait_active("echod.service")
    wait_until(f"{PROM} to be written again", lambda: c.sh(f"test -s {PROM}", check=False).returncode == 0, 40,
               interval=0.2)
    got = samples(scrape(url), "echod_")
    assert got[("echod_connections_accepted_total", frozenset())] == 0, got

