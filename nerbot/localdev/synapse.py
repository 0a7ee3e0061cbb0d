"""A throw-away Synapse on 127.0.0.1 for the tests and ``nerbot demo``.

Synapse is installed from PyPI into its own virtualenv (cached, reused) so it never mixes with
the bot's dependencies. Everything here is synchronous (subprocess, urllib); async callers use
``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SYNAPSE_VERSION = "1.163.2"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO_ROOT / ".cache" / "synapse-venv"
_MARKER = "nerbot-synapse-version"

_HIGH = {"per_second": 10000, "burst_count": 100000}
_RATE_LIMITS: dict[str, Any] = {
    "rc_message": _HIGH,
    "rc_registration": _HIGH,
    "rc_registration_token_validity": _HIGH,
    "rc_login": {"address": _HIGH, "account": _HIGH, "failed_attempts": _HIGH},
    "rc_admin_redaction": _HIGH,
    "rc_joins": {"local": _HIGH, "remote": _HIGH},
    "rc_joins_per_room": _HIGH,
    "rc_3pid_validation": _HIGH,
    "rc_invites": {"per_room": _HIGH, "per_user": _HIGH, "per_issuer": _HIGH},
    "rc_third_party_invite": _HIGH,
    "rc_key_requests": _HIGH,
    "rc_federation": {"window_size": 1000, "sleep_limit": 10000, "sleep_delay": 1,
                      "reject_limit": 10000, "concurrent": 1000},
    "rc_room_creation": _HIGH,
    "rc_reports": _HIGH,
    "rc_presence": {"per_user": _HIGH},
    "rc_delayed_event_mgmt": _HIGH,
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def install_synapse(venv_dir: Path = DEFAULT_VENV) -> float:
    """Install the pinned Synapse into its own virtualenv unless it is there; return seconds."""
    python = venv_dir / "bin" / "python"
    marker = venv_dir / _MARKER
    if marker.exists() and marker.read_text().strip() == SYNAPSE_VERSION and python.exists():
        return 0.0
    started = time.monotonic()
    logger.info("Installing matrix-synapse %s into %s", SYNAPSE_VERSION, venv_dir)
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    uv = shutil.which("uv")
    if uv:
        subprocess.run([uv, "venv", "--quiet", "--allow-existing", "--python", sys.executable,
                        str(venv_dir)], check=True)
        subprocess.run([uv, "pip", "install", "--quiet", "--python", str(python),
                        f"matrix-synapse=={SYNAPSE_VERSION}"], check=True)
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv_dir)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                        f"matrix-synapse=={SYNAPSE_VERSION}"], check=True)
    marker.write_text(SYNAPSE_VERSION)
    seconds = time.monotonic() - started
    logger.info("Synapse installed in %.1f s", seconds)
    return seconds


class LocalSynapse:
    """One Synapse process with its data directory; started and stopped by PID only."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        venv_dir: Path | None = None,
        server_name: str = "localhost",
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.venv_dir = venv_dir or Path(os.environ.get("NERBOT_SYNAPSE_VENV", DEFAULT_VENV))
        self.server_name = server_name
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.install_seconds = 0.0
        self.start_seconds = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "homeserver.yaml"

    def install(self) -> float:
        self.install_seconds = install_synapse(self.venv_dir)
        return self.install_seconds

    def _secrets(self) -> dict[str, str]:
        path = self.data_dir / "secrets.json"
        if path.exists():
            data: dict[str, str] = json.loads(path.read_text())
            return data
        data = {name: secrets.token_hex(32) for name in
                ("registration_shared_secret", "macaroon_secret_key", "form_secret")}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        return data

    def write_config(self) -> None:
        """homeserver.yaml for a loopback-only, SQLite, rate-limit-free test server.

        JSON is valid YAML, so the config is written as JSON without a YAML library.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        config: dict[str, Any] = {
            "server_name": self.server_name,
            "pid_file": str(self.data_dir / "homeserver.pid"),
            "listeners": [{
                "port": self.port, "bind_addresses": ["127.0.0.1"], "type": "http",
                "tls": False, "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }],
            "database": {"name": "sqlite3",
                         "args": {"database": str(self.data_dir / "homeserver.db")}},
            "log_config": str(self.data_dir / "log.config"),
            "media_store_path": str(self.data_dir / "media_store"),
            "signing_key_path": str(self.data_dir / "signing.key"),
            "enable_registration": False,
            "bcrypt_rounds": 4,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "report_stats": False,
            "presence": {"enabled": False},
            "serve_server_wellknown": False,
            "enable_metrics": False,
            **self._secrets(),
            **_RATE_LIMITS,
        }
        self.config_path.write_text(json.dumps(config, indent=2))
        (self.data_dir / "log.config").write_text(json.dumps({
            "version": 1,
            "formatters": {"precise": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
            "handlers": {"file": {"class": "logging.FileHandler", "formatter": "precise",
                                  "filename": str(self.data_dir / "homeserver.log")}},
            "root": {"level": "WARNING", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }))

    def start(self, timeout: float = 90.0) -> float:
        """Start Synapse and wait until the client API answers; return seconds taken."""
        if self.process is not None and self.process.poll() is None:
            return 0.0
        self.install()
        self.write_config()
        python = self.venv_dir / "bin" / "python"
        if not (self.data_dir / "signing.key").exists():
            subprocess.run([str(python), "-m", "synapse.app.homeserver", "-c",
                            str(self.config_path), "--generate-keys"], check=True,
                           cwd=self.data_dir, stdout=subprocess.DEVNULL)
        started = time.monotonic()
        log = (self.data_dir / "stdout.log").open("ab")
        self.process = subprocess.Popen(
            [str(python), "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
            cwd=self.data_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Synapse exited with {self.process.returncode}; see "
                                   f"{self.data_dir / 'homeserver.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/_matrix/client/versions", timeout=2):
                    self.start_seconds = time.monotonic() - started
                    logger.info("Synapse %s up at %s in %.1f s (pid %s)", SYNAPSE_VERSION,
                                self.url, self.start_seconds, self.process.pid)
                    return self.start_seconds
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"Synapse did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the process we started (by its PID), and nothing else."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> LocalSynapse:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP helpers ---------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def register_user(
        self, localpart: str, password: str, admin: bool = False, displayname: str | None = None
    ) -> str:
        """Register through the shared-secret admin API; return the user ID.

        That API logs the new user in on a device without keys; we log it out so session
        counts in tests are exact.
        """
        secret = self._secrets()["registration_shared_secret"]
        nonce = self.request("GET", "/_synapse/admin/v1/register")["nonce"]
        mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode(),
                                 b"admin" if admin else b"notadmin"]))
        body: dict[str, Any] = {"nonce": nonce, "username": localpart, "password": password,
                                "admin": admin, "mac": mac.hexdigest()}
        if displayname:
            body["displayname"] = displayname
        result = self.request("POST", "/_synapse/admin/v1/register", body)
        self.request("POST", "/_matrix/client/v3/logout", {}, token=result["access_token"])
        return str(result["user_id"])

    def login(
        self, user_id: str, password: str, device_name: str = "nerbot-test"
    ) -> dict[str, Any]:
        body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id},
                "password": password, "initial_device_display_name": device_name}
        result: dict[str, Any] = self.request("POST", "/_matrix/client/v3/login", body)
        return result

    def admin_access_token(self, user_id: str, password: str) -> str:
        return str(self.login(user_id, password, "nerbot-admin-token")["access_token"])
