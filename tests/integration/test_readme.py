"""The README's quick start, as a newcomer types it: the commands it gives for trying echod from
a second terminal run verbatim (bash, from the top of the tree) against echod started the way
tools/run starts it (the shipped conf/echod.conf, listen and listen_udp pointed at
127.0.0.1:7007 and [::1]:7007), and each does what the README says it does."""
import os
import re
import socket
import subprocess

import pytest

from conftest import ROOT


def quick_start_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"Try it from a\s+second terminal:\s*```sh\n(.*?)```", text, re.S)
    assert block, "README: the quick start's try-it block is gone"
    return [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]


def port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_quick_start_commands_work_as_written(echod_factory):
    if not port_free(7007):
        pytest.skip("127.0.0.1:7007, the README's port, is in use here")
    shipped = open(os.path.join(ROOT, "conf", "echod.conf")).read()
    conf = re.sub(r"^listen *=.*$", 'listen = {"127.0.0.1:7007", "[::1]:7007"}', shipped, flags=re.M)
    conf = re.sub(r"^listen_udp *=.*$", 'listen_udp = {"127.0.0.1:7007", "[::1]:7007"}', conf, flags=re.M)
    conf += '\ncontrol_socket = ""\n'  # the shipped one is /run/echod/control: another echod may hold it
    echod_factory(conf=conf)
    commands = quick_start_commands()
    assert len(commands) == 4, commands
    outs = []
    for cmd in commands:
        p = subprocess.run(["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, (cmd, p.stdout[-500:], p.stderr[-500:])
        outs.append(p)
    assert outs[0].stdout == "hello\n"                      # echoed and verified
    assert outs[1].stdout == ""                             # nothing poured onto the terminal
    redirect = re.search(r"<\s*(\S+)", commands[1])   # the file it sends (from the top of the tree)
    assert redirect, commands[1]
    size = os.path.getsize(os.path.join(ROOT, redirect.group(1)))
    assert re.search(rf"{size} bytes sent, {size} echoed intact", outs[1].stderr), outs[1].stderr
    assert len(re.findall(r"seq=\d+", outs[2].stdout)) == 5, outs[2].stdout
    assert len(re.findall(r"bytes from 127\.0\.0\.1:7007: seq=\d+", outs[3].stdout)) == 5, outs[3].stdout
