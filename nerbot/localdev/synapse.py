"""A throw-away Synapse on 127.0.0.1 for the tests and ``nerbot demo``.

Why a real Synapse: the bot's whole value is end-to-end encryption and device verification, and
the only honest way to test that is against the server people actually run. Synapse is
installed from PyPI into its own virtualenv (cached and reused) so that its large dependency
tree never mixes with the bot's.

Everything here is synchronous (``subprocess``, ``urllib``) and has no event-loop coupling;
asyncio callers wrap the blocking calls in ``asyncio.to_thread``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SYNAPSE_VERSION = "1.163.2"
"""The pinned Synapse release; bumping it reinstalls the cached virtualenv on the next run."""

MARKER_FILE = "nerbot-synapse-version"
"""Written into the venv after a successful install, holding :data:`SYNAPSE_VERSION`."""

VENV_ENV_VAR = "NERBOT_SYNAPSE_VENV"
"""Environment variable that overrides where the Synapse virtualenv lives."""

_REPO_ROOT = Path(__file__).resolve().parents[2]

_HIGH: dict[str, float] = {"per_second": 100_000, "burst_count": 1_000_000}
# Every client-facing limiter Synapse 1.163 reads. The defaults are tuned against abuse on
# the open internet (e.g. rc_login throttles the 6th login from one address), which a test
# suite that logs in dozens of devices from 127.0.0.1 trips immediately.
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
    "rc_room_creation": _HIGH,
    "rc_reports": _HIGH,
    "rc_presence": {"per_user": _HIGH},
    "rc_delayed_event_mgmt": _HIGH,
    "rc_media_create": _HIGH,
    "rc_user_directory": _HIGH,
    "rc_profile": _HIGH,
    "rc_federation": {"window_size": 1000, "sleep_limit": 100_000, "sleep_delay": 1,
                      "reject_limit": 100_000, "concurrent": 1000},
}
# ``default_rate_limits``: Synapse's defaults, as a new install has them, for everything but
# logins per address. Every person of a test logs in from 127.0.0.1, where a community's
# people come from many addresses; the default (5, then one per 5.5 minutes) would refuse the
# sixth. Per-account limits, which the bot's account meets, stay as installed.
_LOOPBACK_RATE_LIMITS: dict[str, Any] = {"rc_login": {"address": _HIGH}}
_SECRET_KEYS = ("registration_shared_secret", "macaroon_secret_key", "form_secret")

DEFAULT_FEDERATION_PORT = 8448
"""Where other servers reach a server name without a port (``localhost``) when it has no
``.well-known`` and no SRV record, which is the case on loopback."""

REMOTE_SERVER_HOST = "127.0.0.1"
"""A remote test server is named ``127.0.0.1:<federation port>``: an IP literal with a port is
contacted directly on that port, with no ``.well-known`` or SRV lookup that could stall."""


class PortInUseError(RuntimeError):
    """Synapse could not bind one of the ports it was told to use."""

    def __init__(self, port: int, what: str, logs: str) -> None:
        self.port = port
        super().__init__(f"Synapse could not listen on 127.0.0.1:{port} ({what}): the port is "
                         f"in use, probably by another Synapse\n{logs}")


class SynapseError(RuntimeError):
    """A Synapse API call failed; carries the HTTP status and the Matrix error body."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.errcode: str | None = body.get("errcode") if isinstance(body, dict) else None
        super().__init__(f"{method} {path} -> HTTP {status}: {body}")


def default_venv_dir() -> Path:
    """Where the Synapse virtualenv lives unless the caller says otherwise.

    ``$NERBOT_SYNAPSE_VENV`` wins (CI can point it at a persistent cache); in a source checkout
    it is ``<repo>/.cache/synapse-venv`` (git-ignored, shared by the tests and the demo);
    for an installed wheel, where there is no repo, the user's cache directory.
    """
    override = os.environ.get(VENV_ENV_VAR)
    if override:
        return Path(override).expanduser()
    if (_REPO_ROOT / "pyproject.toml").is_file():
        return _REPO_ROOT / ".cache" / "synapse-venv"
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_home / "nerbot" / "synapse-venv"


def free_port() -> int:
    """A port nobody listens on right now (bind 127.0.0.1:0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """True if 127.0.0.1:``port`` can be bound now (as Synapse binds it, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _clean_env() -> dict[str, str]:
    """Our environment minus what would change how the Synapse venv's Python runs.

    ``PYTHONPATH``/``VIRTUAL_ENV`` could leak the bot's packages in. ``PYTHONDONTWRITEBYTECODE``
    (set on some CI images) would make every start re-compile Synapse's ~900 modules: about
    5 s instead of about 1.5 s.
    """
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP",
                 "PYTHONDONTWRITEBYTECODE"):
        env.pop(name, None)
    return env


def _venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


_VERIFIED: set[Path] = set()
"""Venvs already checked by this process; the check imports Synapse, which is not free."""


def synapse_installed(venv_dir: Path) -> bool:
    """True if the venv holds the pinned Synapse and it imports.

    The marker alone is not trusted: a venv whose base interpreter was upgraded or removed
    keeps the marker but cannot run, and would fail much later with a confusing error.
    """
    python = _venv_python(venv_dir)
    marker = venv_dir / MARKER_FILE
    if not python.exists() or not marker.is_file():
        return False
    if marker.read_text().strip() != SYNAPSE_VERSION:
        return False
    # synapse.__version__ carries git details of the cwd; the distribution version does not.
    check = ("import sys, importlib.metadata, synapse; sys.exit(0 if "
             f"importlib.metadata.version('matrix-synapse') == {SYNAPSE_VERSION!r} else 3)")
    result = subprocess.run([str(python), "-c", check], env=_clean_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return result.returncode == 0


@contextlib.contextmanager
def _install_lock(venv_dir: Path) -> Iterator[None]:
    """Serialise installs of one venv across processes (parallel test runs, demo + tests)."""
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv_dir.with_name(venv_dir.name + ".lock")
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def install_synapse(venv_dir: Path | None = None) -> float:
    """Make sure the pinned Synapse is installed in ``venv_dir``; return the seconds it took.

    A valid cached venv is reused (the return value is then the cost of checking it, well under
    a second). ``uv`` is used when it is on PATH because it installs Synapse's ~90 packages
    several times faster than pip; otherwise the standard ``venv`` + ``pip`` path is taken.
    """
    venv_dir = (venv_dir or default_venv_dir()).resolve()
    started = time.monotonic()
    if venv_dir in _VERIFIED and (venv_dir / MARKER_FILE).is_file():
        return 0.0
    with _install_lock(venv_dir):
        if synapse_installed(venv_dir):
            _VERIFIED.add(venv_dir)
            seconds = time.monotonic() - started
            logger.info("Reusing Synapse %s in %s (checked in %.2f s)", SYNAPSE_VERSION,
                        venv_dir, seconds)
            return seconds
        logger.info("Installing matrix-synapse==%s into %s", SYNAPSE_VERSION, venv_dir)
        (venv_dir / MARKER_FILE).unlink(missing_ok=True)
        python = _venv_python(venv_dir)
        requirement = f"matrix-synapse=={SYNAPSE_VERSION}"
        env = _clean_env()
        uv = shutil.which("uv")
        if uv:
            subprocess.run([uv, "venv", "--quiet", "--clear", "--python", sys.executable,
                            str(venv_dir)], check=True, env=env)
            subprocess.run([uv, "pip", "install", "--quiet", "--compile-bytecode",
                            "--python", str(python), requirement], check=True, env=env)
        else:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv_dir)],
                           check=True, env=env)
            subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                            "--disable-pip-version-check", requirement], check=True, env=env)
        (venv_dir / MARKER_FILE).write_text(SYNAPSE_VERSION + "\n")
        if not synapse_installed(venv_dir):
            raise RuntimeError(f"Synapse {SYNAPSE_VERSION} was installed into {venv_dir} "
                               "but does not import")
        _VERIFIED.add(venv_dir)
    seconds = time.monotonic() - started
    logger.info("Installed Synapse %s in %.1f s (%s)", SYNAPSE_VERSION, seconds,
                "uv" if uv else "pip")
    return seconds


class LocalSynapse:
    """One Synapse process on 127.0.0.1 with its own data directory (SQLite, keys, media, logs).

    The data directory can be reused: secrets and the signing key are kept, so accounts and
    rooms survive a restart (the demo relies on that). The process is started in its own
    process group and stopped by its PID only, so nothing else on the machine is touched.

    With ``federation_port`` the server also speaks federation (TLS, self-signed certificate)
    on that port, so tests can put people on two servers; see :meth:`remote`. Without it, as in
    the demo, the server talks to no other server.

    Rate limits are raised out of the way unless ``default_rate_limits``: then Synapse's
    defaults apply, as on a new install (only logins per address are raised, see
    ``_LOOPBACK_RATE_LIMITS``).
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        venv_dir: Path | None = None,
        server_name: str = "localhost",
        federation_port: int | None = None,
        default_rate_limits: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.default_rate_limits = default_rate_limits
        self.venv_dir = Path(venv_dir).resolve() if venv_dir else default_venv_dir().resolve()
        self.server_name = server_name
        self.federation_port = federation_port
        self._port_requested = port is not None
        self.port = port if port is not None else self._pick_port()
        if self.port == federation_port:
            if self._port_requested:
                raise ValueError(f"client and federation port are both {self.port}")
            self.port = self._other_free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.install_seconds = 0.0
        self.start_seconds = 0.0
        self._installed = False

    @classmethod
    def remote(cls, data_dir: Path, venv_dir: Path | None = None) -> LocalSynapse:
        """A second server, named ``127.0.0.1:<federation port>``, to federate with another.

        The federation port is part of the server name, which can never change for a data
        directory, so a reused data dir keeps its port; a new one gets a free port.
        """
        federation_port: int | None = None
        config_path = Path(data_dir) / "homeserver.yaml"
        with contextlib.suppress(OSError, ValueError, AttributeError):
            name = str(json.loads(config_path.read_text()).get("server_name"))
            host, _, port = name.rpartition(":")
            if host == REMOTE_SERVER_HOST:
                federation_port = int(port)
        if federation_port is None:
            federation_port = free_port()
        return cls(data_dir, venv_dir=venv_dir, federation_port=federation_port,
                   server_name=f"{REMOTE_SERVER_HOST}:{federation_port}")

    # -- paths and properties --------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL of the client API, e.g. ``http://127.0.0.1:8008``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def tls_certificate_path(self) -> Path:
        """Self-signed certificate of the federation listener (nobody verifies it)."""
        return self.data_dir / "federation.crt"

    @property
    def tls_key_path(self) -> Path:
        return self.data_dir / "federation.key"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "homeserver.yaml"

    @property
    def log_path(self) -> Path:
        """Synapse's own log (WARNING and above); read it when a test fails mysteriously."""
        return self.data_dir / "homeserver.log"

    @property
    def pid(self) -> int | None:
        """PID of the running Synapse we started, or None."""
        if self.process is None or self.process.poll() is not None:
            return None
        return int(self.process.pid)

    @property
    def running(self) -> bool:
        return self.pid is not None

    def _existing_config(self) -> dict[str, Any] | None:
        if not self.config_path.exists():
            return None
        try:
            config: dict[str, Any] = json.loads(self.config_path.read_text())
        except json.JSONDecodeError as exc:
            raise RuntimeError(f"{self.config_path} was not written by nerbot (not JSON); "
                               "use another data directory") from exc
        return config

    def _pick_port(self) -> int:
        """Reuse the data dir's previous port when it is free, so URLs people saved keep working."""
        with contextlib.suppress(RuntimeError, OSError, KeyError, IndexError, TypeError):
            existing = self._existing_config()
            if existing is not None:
                previous = int(existing["listeners"][0]["port"])
                if port_is_free(previous):
                    return previous
        return free_port()

    def _other_free_port(self) -> int:
        """A free port for the client API that is not the federation port."""
        while True:
            port = free_port()
            if port != self.federation_port:
                return port

    # -- install and configuration ---------------------------------------------------------

    def install(self) -> float:
        """Install (or reuse) the pinned Synapse; blocking. Returns and records the seconds."""
        self.install_seconds = install_synapse(self.venv_dir)
        self._installed = True
        return self.install_seconds

    def _secrets(self) -> dict[str, str]:
        existing = self._existing_config() or {}
        return {key: str(existing.get(key) or secrets.token_hex(32)) for key in _SECRET_KEYS}

    def write_config(self) -> None:
        """Write ``homeserver.yaml`` for a loopback-only, SQLite server (rate-limit-free unless
        ``default_rate_limits``).

        The file is JSON, which is valid YAML, so no YAML library is needed on our side. On a
        reused data dir the secrets are kept (changing ``macaroon_secret_key`` would invalidate
        every stored access token) and everything else is rewritten, in particular the port.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        existing = self._existing_config()
        if existing is not None and existing.get("server_name") != self.server_name:
            raise ValueError(f"{self.data_dir} belongs to server {existing.get('server_name')!r}, "
                             f"not {self.server_name!r}; a server name cannot change")
        config: dict[str, Any] = {
            "server_name": self.server_name,
            "public_baseurl": self.url + "/",
            "listeners": [{
                "port": self.port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }, *self._federation_listeners()],
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
            "url_preview_enabled": False,
            # So a person in the demo can find the bot from Element's "start chat" search.
            "user_directory": {"enabled": True, "search_all_users": True},
            **self._secrets(),
            **(_LOOPBACK_RATE_LIMITS if self.default_rate_limits else _RATE_LIMITS),
            **self._federation_settings(),
        }
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(config, fh, indent=2)
        log_config = {
            "version": 1,
            "formatters": {"precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(message)s"}},
            "handlers": {"file": {"class": "logging.FileHandler", "formatter": "precise",
                                  "filename": str(self.log_path), "encoding": "utf8"}},
            "root": {"level": "WARNING", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }
        (self.data_dir / "log.config").write_text(json.dumps(log_config, indent=2))

    def _federation_listeners(self) -> list[dict[str, Any]]:
        """The TLS listener other servers talk to (federation API and signing keys), if any."""
        if self.federation_port is None:
            return []
        return [{
            "port": self.federation_port,
            "bind_addresses": ["127.0.0.1"],
            "type": "http",
            "tls": True,
            "x_forwarded": False,
            "resources": [{"names": ["federation"], "compress": False}],
        }]

    def _federation_settings(self) -> dict[str, Any]:
        """What it takes for two servers on loopback to talk to each other.

        Synapse refuses to contact private addresses by default (``ip_range_blacklist``) and
        verifies certificates; neither makes sense between two throw-away servers on
        127.0.0.1. Both are relaxed only when federation is asked for. A server that was
        down is tried again after seconds, not Synapse's 10 minutes: tests stop and restart
        servers on purpose.
        """
        if self.federation_port is None:
            return {}
        return {
            "tls_certificate_path": str(self.tls_certificate_path),
            "tls_private_key_path": str(self.tls_key_path),
            "federation_verify_certificates": False,
            "ip_range_whitelist": ["127.0.0.0/8"],
            "ip_range_blacklist": [],
            "federation": {"destination_min_retry_interval": "1s",
                           "destination_max_retry_interval": "2s"},
        }

    def _write_tls_certificate(self) -> None:
        """Create the federation listener's self-signed certificate unless there is one.

        Written under temporary names and renamed into place, so an interrupted ``openssl``
        never leaves a half pair that later runs would keep.
        """
        if self.tls_certificate_path.exists() and self.tls_key_path.exists():
            return
        openssl = shutil.which("openssl")
        if openssl is None:
            raise RuntimeError("a federating test Synapse needs the openssl command for its "
                               "self-signed TLS certificate; install openssl")
        key_tmp = self.tls_key_path.with_suffix(".key.tmp")
        cert_tmp = self.tls_certificate_path.with_suffix(".crt.tmp")
        key_tmp.unlink(missing_ok=True)
        os.close(os.open(key_tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        host = self.server_name.rpartition(":")[0] or self.server_name
        result = subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                                 "-days", "3650", "-subj", f"/CN={host}",
                                 "-keyout", str(key_tmp), "-out", str(cert_tmp)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"openssl could not make a certificate in {self.data_dir}: "
                               f"{result.stderr.decode(errors='replace').strip()}")
        key_tmp.chmod(0o600)
        key_tmp.replace(self.tls_key_path)
        cert_tmp.replace(self.tls_certificate_path)

    def _write_signing_key(self) -> None:
        """Create the server's Ed25519 signing key unless the data dir already has one.

        Written directly in Synapse's format (``ed25519 <version> <unpadded base64 seed>``,
        any 32 random bytes are a valid seed) rather than with ``--generate-keys``, which would
        cost a second full Synapse import (seconds) for 32 random bytes.
        """
        path = self.data_dir / "signing.key"
        if path.exists():
            return
        version = "a_" + secrets.token_hex(2)
        seed = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"ed25519 {version} {seed}\n")

    # -- process lifecycle -----------------------------------------------------------------

    def _check_no_stale_process(self) -> None:
        """Refuse to run two Synapses on one SQLite database.

        A previous run that was SIGKILLed leaves its Synapse running (it lives in its own
        process group, so it does not get the terminal's Ctrl-C either). We do not kill it,
        as it is not a process this object started; we name it so the person can.
        """
        pid_file = self.data_dir / "nerbot-synapse.pid"
        if not pid_file.exists():
            return
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if str(self.config_path).encode() in cmdline:
                raise RuntimeError(
                    f"A Synapse from an earlier run (PID {pid}) still uses {self.data_dir}; "
                    f"stop it first (kill {pid})")
        pid_file.unlink(missing_ok=True)

    def _tail_logs(self, lines: int = 15) -> str:
        out = []
        for path in (self.data_dir / "stdout.log", self.log_path):
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path.name} ---\n" + "\n".join(tail))
        return "\n".join(out)

    def _stdout_size(self) -> int:
        path = self.data_dir / "stdout.log"
        return path.stat().st_size if path.exists() else 0

    def _could_not_bind(self, port: int, log_offset: int) -> bool:
        """Whether this start's output (from ``log_offset`` on) says ``port`` was taken.

        Twisted's ``CannotListenError`` names the address, which tells a taken client port
        (worth retrying on another) from a taken federation port (fixed: the caller decides).
        """
        with contextlib.suppress(OSError), (self.data_dir / "stdout.log").open("rb") as fh:
            fh.seek(log_offset)
            output = fh.read().decode(errors="replace")
            return re.search(rf"Couldn't listen on 127\.0\.0\.1:{port}\b", output) is not None
        return False

    def _launch(self) -> subprocess.Popen[bytes]:
        with (self.data_dir / "stdout.log").open("ab") as log:
            process = subprocess.Popen(
                [str(_venv_python(self.venv_dir)), "-m", "synapse.app.homeserver",
                 "-c", str(self.config_path)],
                cwd=self.data_dir, env=_clean_env(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        (self.data_dir / "nerbot-synapse.pid").write_text(f"{process.pid}\n")
        return process

    def _versions_ok(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/_matrix/client/versions", timeout=2) as r:
                return int(r.status) == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def start(self, timeout: float = 60.0) -> float:
        """Start Synapse and wait until ``/_matrix/client/versions`` answers 200; blocking.

        Installs Synapse first if needed (that time is recorded in ``install_seconds``, not in
        the returned start time). Returns and records the seconds from launch to first 200.
        Calling it while the server runs is a no-op that returns 0.
        """
        if self.running:
            return 0.0
        if not self._installed:
            self.install()
        self._check_no_stale_process()
        attempts = 1 if self._port_requested else 3
        for attempt in range(1, attempts + 1):
            self.write_config()
            self._write_signing_key()
            if self.federation_port is not None:
                self._write_tls_certificate()
            log_offset = self._stdout_size()
            started = time.monotonic()
            self.process = self._launch()
            deadline = started + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                if self._versions_ok():
                    self.start_seconds = time.monotonic() - started
                    logger.info("Synapse %s up at %s in %.2f s (PID %d, data %s)",
                                SYNAPSE_VERSION, self.url, self.start_seconds, self.process.pid,
                                self.data_dir)
                    return self.start_seconds
                time.sleep(0.05)
            else:
                self.stop()
                raise TimeoutError(f"Synapse did not answer on {self.url} within {timeout:.0f} s"
                                   f"\n{self._tail_logs()}")
            code = self.process.returncode
            self.process = None
            (self.data_dir / "nerbot-synapse.pid").unlink(missing_ok=True)
            logs = self._tail_logs()
            if self._could_not_bind(self.port, log_offset):
                if attempt < attempts:
                    # The auto-picked port was taken between our probe and Synapse's bind.
                    logger.warning("Port %d was taken; retrying Synapse on another port",
                                   self.port)
                    self.port = self._other_free_port()
                    continue
                raise PortInUseError(self.port, "client API", logs)
            if self.federation_port is not None \
                    and self._could_not_bind(self.federation_port, log_offset):
                raise PortInUseError(self.federation_port, "federation", logs)
            raise RuntimeError(f"Synapse exited with code {code} during start-up\n{logs}")
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the Synapse this object started (SIGTERM, SIGKILL after 10 s), nothing else."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            logger.info("Stopping Synapse (PID %d)", process.pid)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                logger.warning("Synapse (PID %d) ignored SIGTERM for 10 s; killing it",
                               process.pid)
                process.kill()
                process.wait(timeout=10)
        (self.data_dir / "nerbot-synapse.pid").unlink(missing_ok=True)

    def __enter__(self) -> LocalSynapse:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP helpers (blocking) -----------------------------------------------------------

    def request(
        self, method: str, path: str, body: Any = None, token: str | None = None,
        timeout: float = 30.0,
    ) -> Any:
        """One JSON request to the server; raises :class:`SynapseError` on a non-2xx answer."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                detail: Any = json.loads(payload)
            except ValueError:
                detail = payload.decode(errors="replace")
            raise SynapseError(method, path, exc.code, detail) from None
        return json.loads(raw) if raw else {}

    def user_id(self, localpart: str) -> str:
        """The full Matrix ID for a localpart on this server."""
        return f"@{localpart}:{self.server_name}"

    def register_user(
        self, localpart: str, password: str, admin: bool = False, displayname: str | None = None
    ) -> str:
        """Register an account through the shared-secret admin API; return its user ID.

        Registration is closed to the public (``enable_registration: false``), which is the
        safe default even for a loopback server. The API also logs the new account in on a
        device without keys; that session is logged out so device counts in tests are exact.
        """
        secret = self._secrets()["registration_shared_secret"]
        nonce = str(self.request("GET", "/_synapse/admin/v1/register")["nonce"])
        mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode(),
                                 b"admin" if admin else b"notadmin"]))
        body: dict[str, Any] = {"nonce": nonce, "username": localpart, "password": password,
                                "admin": admin, "mac": mac.hexdigest()}
        if displayname:
            body["displayname"] = displayname
        result = self.request("POST", "/_synapse/admin/v1/register", body)
        token = result.get("access_token")
        if token:
            self.request("POST", "/_matrix/client/v3/logout", {}, token=str(token))
        user_id = str(result["user_id"])
        logger.debug("Registered %s (admin=%s)", user_id, admin)
        return user_id

    def login(self, user: str, password: str, device_name: str = "nerbot-test") -> dict[str, Any]:
        """Password login (localpart or full user ID); returns the raw login response.

        Each call creates a new device: log it out (``logout``) when done if devices are counted.
        """
        body = {"type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user},
                "password": password, "initial_device_display_name": device_name}
        result: dict[str, Any] = self.request("POST", "/_matrix/client/v3/login", body)
        return result

    def logout(self, token: str) -> None:
        """Log out one access token (and delete its device)."""
        self.request("POST", "/_matrix/client/v3/logout", {}, token=token)

    def admin_access_token(self, localpart: str, password: str) -> str:
        """An access token for the Synapse admin API (the account must be a server admin).

        This is a real login with its own device named ``nerbot-admin-token``.
        """
        return str(self.login(localpart, password, "nerbot-admin-token")["access_token"])

    @staticmethod
    def api_path(template: str, *ids: str) -> str:
        """Fill ``{}`` placeholders of an API path with URL-quoted Matrix IDs.

        ``api_path("/_synapse/admin/v2/users/{}/devices", "@a:localhost")``
        """
        return template.format(*(urllib.parse.quote(u, safe="") for u in ids))
