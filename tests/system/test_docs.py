"""Man pages and unit files, as built by meson: lintian's man page check, every
configuration key and command-line option documented, and the service's exposure."""
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from systest import BUILD, ECHOC, ECHOD, run

MAN = os.path.join(BUILD, "man")
PAGES = ["echod.8", "echod.conf.5", "echoc.1"]


def page(name):
    path = os.path.join(MAN, name)
    if not os.path.exists(path):
        pytest.skip(f"{path} not built (meson found no scdoc at setup: -Dman=enabled makes it required)")
    return path


def render(name):
    """The page as man(1) shows it, as plain text, wide enough not to wrap headings."""
    env = dict(os.environ, LC_ALL="C.UTF-8", MANWIDTH="250", MAN_KEEP_FORMATTING="")
    out = run(["man", "-l", page(name)], timeout=30, env=env, stderr=subprocess.PIPE).stdout
    out = re.sub(r".\x08", "", out)  # overstrike bold/underline, should there be any
    return out.replace("\u2010", "-").replace("\u2212", "-").replace("\u2018", "'").replace("\u2019", "'")


@pytest.mark.parametrize("name", PAGES)
def test_man_page_has_no_groff_warnings(name):
    # lintian's groff-message check, verbatim
    env = dict(os.environ, LC_ALL="C.UTF-8", MANROFFSEQ="", MANWIDTH="80")
    r = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", page(name)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, timeout=30)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def effective_defaults():
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as empty:
        out = run([ECHOD, "-T", "-f", empty.name], timeout=10, stderr=subprocess.PIPE).stdout
    keys = {}
    for line in out.splitlines():
        m = re.match(r"^(\w+)\s*=\s*(.*?)\s*$", line)
        if m:
            keys[m.group(1)] = m.group(2)
    assert keys, out
    return keys


def test_echod_conf_5_documents_every_key_with_type_default_and_reload():
    text = render("echod.conf.5")
    headings = {}
    for line in text.splitlines():
        m = re.match(r"^ {7}(\w+) \((.*)\)$", line)
        if m:
            headings[m.group(1)] = m.group(2)
    missing = []
    for key, default in effective_defaults().items():
        if key not in headings:
            missing.append(key)
            continue
        parts = [p.strip() for p in headings[key].split(";")]
        assert len(parts) == 3 and parts[0], f"{key}: '({headings[key]})' is not '(type; default: X; reload: yes|no)'"
        assert parts[1] == f"default: {default}", f"{key}: man page says '{parts[1]}', echod -T says '{default}'"
        assert parts[2] in ("reload: yes", "reload: no"), f"{key}: '{parts[2]}'"
    assert not missing, f"keys printed by 'echod -T' but not documented in echod.conf(5): {missing}"


def test_echod_8_documents_every_option_command_and_exit_status():
    text = render("echod.8")
    help_text = run([ECHOD, "-h"], timeout=10).stdout
    options = re.findall(r"^  (-\w|[a-z]+)\s", help_text, re.M)  # options and commands
    assert "-f" in options, help_text
    for opt in options:
        assert re.search(rf"^ {{7}}{opt}\b", text, re.M), f"echod(8) does not document {opt}"
    section = text.split("EXIT STATUS", 1)[1].split("EXAMPLES", 1)[0]
    for status in ("0", "1", "2", "6"):
        assert re.search(rf"^ {{7}}{status}$", section, re.M), f"exit status {status}"


def test_echoc_1_documents_every_option_and_exit_status():
    text = render("echoc.1")
    options_section = text.split("\nOPTIONS", 1)[1].split("\nOUTPUT", 1)[0]
    help_text = run([ECHOC, "-h"], timeout=10).stdout
    options = set(re.findall(r"(?<![\w-])(--?[a-zA-Z0-9][\w-]*)", help_text.split("\n", 1)[1]))
    options -= {"-"}
    assert "--load" in options and "--proxy-source" in options, options
    undocumented = [o for o in sorted(options)
                    if not re.search(rf"^ {{7}}(.*[ ,])?{re.escape(o)}\b", options_section, re.M)]
    assert not undocumented, f"echoc(1) OPTIONS lacks {undocumented}"
    section = text.split("EXIT STATUS", 1)[1].split("EXAMPLES", 1)[0]
    for status in ("0", "1", "2"):
        assert re.search(rf"^ {{7}}{status}$", section, re.M), f"exit status {status}"


def test_service_unit_exposure_is_2_0_or_better():
    unit = os.path.join(BUILD, "systemd", "echod.service")
    if not os.path.exists(unit):
        pytest.skip(f"{unit} not generated (meson option echod=false?)")
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    r = run(["systemd-analyze", "security", "--offline=yes", "--threshold=20", "--no-pager", unit],
            timeout=60, check=False)
    m = re.search(r"Overall exposure level for echod.service: (\d+\.\d+)", r.stdout)
    assert m, r.stdout
    assert r.returncode == 0 and float(m.group(1)) <= 2.0, r.stdout[-3000:]
    with open(unit) as f:
        assert "@" not in "".join(line for line in f if line.startswith("Exec")), "unsubstituted @var@"
