"""The README's `nerbot demo`: it answers, and a SIGTERM stops the bot and its homeserver."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

RUNNING = "Running; press Ctrl-C to stop the bot and the homeserver."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has ended; its parent just has not reaped it yet


def test_sigterm_stops_the_demo_and_the_homeserver_it_started(tmp_path: Path) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "nerbot", "demo", "--workdir", str(tmp_path / "demo"),
         "--port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    synapse_pid: int | None = None
    try:
        assert demo.stdout is not None
        lines = []
        for line in demo.stdout:  # ends when the demo ends (then the assertion below fails)
            lines.append(line.rstrip("\n"))
            if line.startswith(RUNNING):
                break
        assert RUNNING in lines, "\n".join(lines[-20:])
        assert any("the bot answered (decrypted)" in line for line in lines)
        pid_file = tmp_path / "demo" / "synapse" / "nerbot-synapse.pid"
        synapse_pid = int(pid_file.read_text().strip())
        assert alive(synapse_pid)
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=60) == 0
        deadline = time.monotonic() + 30  # Synapse is stopped before the demo exits
        while alive(synapse_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(synapse_pid), f"Synapse (PID {synapse_pid}) outlived the demo"
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        if synapse_pid is not None and alive(synapse_pid):  # the demo's, so the test's own
            os.kill(synapse_pid, signal.SIGTERM)
    with pytest.raises(FileNotFoundError):  # a stopped Synapse leaves no PID behind
        pid_file.read_text()
