"""'echod status --format=prometheus': the Prometheus text exposition format (0.0.4), from the same
snapshot as the text and JSON forms. Known traffic (three clean echoes of known sizes, a refusal by
the access list, a failed and a successful reload), then exact values, the JSON form's new keys
agreeing with it, and promtool's verdict on the output (no problems, no lint warnings)."""
import json
import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import ECHOD, base_config, connect, connect_from, echo_roundtrip, refused

SIZES = (10, 100, 2000)  # bytes per echo: one in each of the session_bytes buckets 64, 1024, 16384


def status(e, *args):
    out = subprocess.run([ECHOD, "-f", e.conf_path, "status", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def parse(text):
    """{'name{labels}': value} for every sample; every family has # HELP and # TYPE before it."""
    samples, declared = {}, {}
    for line in text.splitlines():
        m = re.match(r"# (HELP|TYPE) (\S+) ?(.*)$", line)
        if m:
            declared.setdefault(m.group(2), {})[m.group(1)] = m.group(3)
            continue
        m = re.match(r"([a-z_]+)(\{[^}]*\})? (\S+)$", line)
        assert m, f"not a sample line: {line!r}"
        name = m.group(1)
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in declared else name
        assert family in declared and set(declared[family]) == {"HELP", "TYPE"}, f"undeclared: {line!r}"
        key = name + (m.group(2) or "")
        assert key not in samples, f"sample twice: {key}"
        samples[key] = float(m.group(3))
    return samples, declared


def traffic(echod_factory, tmpdir_path):
    """echod with its own control socket, and the known traffic. Returns (echod, the time window of
    the successful reload)."""
    keys = dict(control_socket=f'"{tmpdir_path}/control"', max_connections=4, max_per_source=0,
                deny='{"127.0.0.9"}')
    e = echod_factory(**keys)
    ep = e.endpoint()
    for i, n in enumerate(SIZES):
        with connect(ep) as s:
            assert echo_roundtrip(s, b"m" * n) == b"m" * n  # half-closed: the child ends clean
        e.wait_log(r"closed: clean, ", count=i + 1)  # one at a time: the peak is 1
    with connect_from(ep, "127.0.0.9") as s:
        assert refused(s)
    e.wait_log(r"refused connection from 127\.0\.0\.9:\d+: acl")

    e.write_config(base_config(**keys) + "max_connections = banana\n")
    e.reload()
    e.wait_log(r"Failed to reload, keeping the old configuration")
    before = time.time()
    e.write_config(base_config(**dict(keys, max_connections=5)))
    e.reload()
    e.wait_log(r"reloaded configuration from")
    return e, (before, time.time())


def test_prometheus_values_are_exact(echod_factory, tmpdir_path):
    t0 = time.time()
    e, (before, after) = traffic(echod_factory, tmpdir_path)
    text = status(e, "--format=prometheus")
    m, declared = parse(text)

    assert all(name.startswith("echod_") for name in declared)
    for name, d in declared.items():
        assert d["HELP"], name
        assert (d["TYPE"] == "counter") == name.endswith("_total"), name

    assert m['echod_build_info{version="%s"}' % json.loads(status(e, "--json"))["version"]] == 1
    assert t0 - 5 <= m["echod_start_time_seconds"] <= before
    assert m['echod_config_reloads_total{result="success"}'] == 1
    assert m['echod_config_reloads_total{result="failure"}'] == 1
    assert before - 0.001 <= m["echod_config_last_reload_success_timestamp_seconds"] <= after + 0.001

    assert m["echod_listeners"] == 1
    assert m['echod_listener_info{address="%s",proxy="no",socket="bound"}' % e.addresses[0]] == 1

    assert m["echod_connections_accepted_total"] == 3
    refusals = {k: v for k, v in m.items() if k.startswith("echod_connections_refused_total")}
    assert refusals == {f'echod_connections_refused_total{{reason="{r}"}}': (1 if r == "acl" else 0)
                        for r in ("capacity", "per-source", "rate", "per-source-rate", "acl", "proxy",
                                  "fork-failed", "spawner-failed")}
    assert m["echod_connections_active"] == 0 and m["echod_connections_pending"] == 0
    assert m["echod_connections_max"] == 5  # the reloaded configuration's
    assert m["echod_connections_queued"] == 0 and m["echod_connections_peak"] == 1

    closed = {k: v for k, v in m.items() if k.startswith("echod_sessions_closed_total")}
    assert closed['echod_sessions_closed_total{reason="clean"}'] == 3
    assert sum(closed.values()) == 3 and len(closed) == 11  # every reason, zeros included
    assert m["echod_received_bytes_total"] == sum(SIZES)
    assert m["echod_sent_bytes_total"] == sum(SIZES)

    assert m["echod_session_bytes_count"] == 3 and m["echod_session_bytes_sum"] == sum(SIZES)
    assert [m[f'echod_session_bytes_bucket{{le="{le}"}}'] for le in ("64", "1024", "16384", "262144", "+Inf")] \
        == [1, 2, 3, 3, 3]
    assert m["echod_session_duration_seconds_count"] == 3
    assert m['echod_session_duration_seconds_bucket{le="+Inf"}'] == 3
    assert m['echod_session_duration_seconds_bucket{le="3600"}'] == 3
    assert 0 < m["echod_session_duration_seconds_sum"] < 60
    buckets = [v for k, v in m.items() if k.startswith("echod_session_duration_seconds_bucket")]
    assert buckets == sorted(buckets)  # cumulative

    assert m['echod_spawner_state{state="running"}'] == 1
    assert m['echod_spawner_state{state="stuck"}'] + m['echod_spawner_state{state="restarting"}'] == 0
    assert m["echod_spawner_restarts_total"] == 0
    assert m["echod_spawner_handoffs_queued"] == 0 and m["echod_spawner_handoffs_in_flight"] == 0
    for table, capacity in (("rate", 65536), ("connections", 262144)):  # accept.c SOURCE_RATES_MAX, SLOTS_MAX
        assert m[f'echod_source_table_entries{{table="{table}"}}'] == 0
        assert m[f'echod_source_table_capacity{{table="{table}"}}'] == capacity
        assert m[f'echod_source_table_overflows_total{{table="{table}"}}'] == 0

    # no client appears anywhere: an address is only ever a configured listener's
    assert "127.0.0.9" not in text
    assert [ln for ln in text.splitlines() if "127.0.0." in ln] == \
        [ln for ln in text.splitlines() if ln.startswith("echod_listener_info")]

    # the JSON form, from the same snapshot: the new keys agree; --json is --format=json
    st = json.loads(status(e, "--format=json"))
    assert json.loads(status(e, "--json"))["closed"] == st["closed"]
    assert st["config"]["reloads"] == 1 and st["config"]["reload_failures"] == 1
    assert st["config"]["loaded_unix_usec"] / 1e6 == pytest.approx(
        m["echod_config_last_reload_success_timestamp_seconds"], abs=1e-6)
    assert st["closed"]["clean"] == 3 and sum(st["closed"].values()) == 3
    h = st["histograms"]["session_bytes"]
    assert h["bounds"][:3] == [64, 1024, 16384] and h["counts"][:4] == [1, 1, 1, 0]
    assert h["count"] == 3 and h["sum"] == sum(SIZES)
    assert st["histograms"]["session_duration_usec"]["count"] == 3
    assert st["source_tables"]["rate"]["capacity"] == 65536  # SOURCE_RATES_MAX
    assert st["source_tables"]["connections"]["capacity"] == 262144  # SLOTS_MAX
    # and the text form
    text = status(e)
    assert ", 1 reload, 1 failed\n" in text and "\nclosed       clean 3\n" in text


def test_status_format_option(echod_factory, tmpdir_path):
    e = echod_factory(control_socket=f'"{tmpdir_path}/control"')
    assert status(e, "--format=text").startswith("echod ")
    assert status(e, "--format", "prometheus").startswith("# HELP echod_")
    out = subprocess.run([ECHOD, "-f", e.conf_path, "status", "--format=xml"], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 2 and "unknown format 'xml'" in out.stderr


def promtool():
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package prometheus; tools/deps.sh test installs it)")
    return path


def test_promtool_finds_no_problem(echod_factory, tmpdir_path):
    tool = promtool()
    e, _ = traffic(echod_factory, tmpdir_path)
    text = status(e, "--format=prometheus")
    assert "echod_session_duration_seconds_bucket" in text  # not an empty exposition
    out = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout == "" and out.stderr == "", \
        f"promtool check metrics exited {out.returncode}:\n{out.stdout}{out.stderr}"
