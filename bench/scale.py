"""Benchmark nerbot at community scale: 10,000 people on one machine, the real ``nerbot run``.

Run: ``uv run python bench/scale.py [--people N] [--ceiling PER_MINUTE] [--phases 1,2,3,4,5]
[--workdir DIR] [--rebuild] [--verify N] [--workers W]``.

The world (built once, kept in ``--workdir``, default ``.nerbot-scale/``): a Synapse on 127.0.0.1
and N people with 1-3 devices each in the mix of ``AccountBuilder.plan_many`` (about 60 % with
cross-signing, about 80 % of their devices cross-signed); 95 % of the people with cross-signing
also have a key backup and secret storage, as current Element sets up at first login. Under the
default ``remind_about`` (the bot has the admin token, so secret storage is visible; the backup
is not checked) a person is at risk without cross-signing, without secret storage, or with an
unsigned device: about 63 % of them. ``world.json`` lists every person (user ID, password, one
device's token, their state), the server admin (healthy: cross-signing, backup and secret
storage, so never reminded) and every bot account the bench registered. A later run reuses it
(``--rebuild`` starts over); an interrupted build resumes from ``world.partial.jsonl``. People
are created through the admin API (``PUT /_synapse/admin/v2/users``) and built by ``--workers``
threads; progress, rate and ETA are logged every few seconds.

Every run registers fresh bot accounts and runs ``python -m nerbot run -c CONFIG`` as a
subprocess (stdout and stderr to ``runs/<time>/<bot>.log``; ``[reminders] scope = "all-local"``,
``grace = "0"``, ``backoff = ["30d"]``, ``timezone = "UTC"``, ``[alerts] enabled``, the admin token
and password through ``NERBOT_ADMIN_TOKEN`` / ``NERBOT_PASSWORD``). The bench watches it from
outside only: its log lines, its database (read-only), ``/proc/<pid>``, and the homeserver.

1. Scan (bot A, a first start): the raw batched ``/keys/query`` of the same N people (batches
   of ``DEFAULT_BATCH``, JSON parsed, median of 3, before the bot starts), then the bot's cold
   start and full scan (its "Reminder scan: … (x s)" line), then an unchanged rescan in the same
   process. The rescan comes from the bot's own scheduler: ``scan_every = "5m"`` (the minimum)
   and quiet hours over the whole day, so neither scan sends anything and the second one is the
   bot's real periodic scan with everything it has cached, five minutes later, nothing changed.
   Nothing else is done to the bot in between; the bench waits. (A restart would be a cold scan
   again, and a scan during the campaign would compete with it.) Bot A is then stopped and
   deactivated (it opened no rooms).
2. Campaign (bot B, a first start, ``scan_every = "6h"``, no quiet hours): its first scan queues
   everyone at risk and the outbox sends them one new encrypted DM each, paced at ``--ceiling``
   (``max_sends_per_minute``). From the outbox rows: achieved rate (sends − 1 over first to last
   ``sent_ms``) / ceiling, and the time the first 200 DMs took against the last 200. On the
   homeserver (admin API): the bot's joined rooms against the sent reminders (one room per
   person, nothing lost, nothing duplicated), and ``--verify`` DM rooms read back: exactly the
   one recorded event from the bot in each. Before bot B starts, one person (the "asker", a real
   E2EE client: ``E2EEPeer``) opens a DM with it and, once it runs, sends one unmeasured
   ``!help`` (their Megolm session is then shared, as for anyone who talked to the bot before).
3. Restart: 100 people accept their DM (join it, so the bot shares a room with them and sync
   tells it their device changes), the bot is stopped (SIGTERM, by PID) and started again; the
   asker sends ``!help`` at process start; seconds from process start to the answer decrypted
   on the asker's side, and to the bot's "Logged in" (session and crypto store opened) and
   "nerbot is running" (first sync processed) lines. The first sync as the bot logs it
   ("First sync (resumed|full state): …"; older versions: "First sync: …", always full
   state; versions before that did not log it), and, after the bot's final stop,
   what a full-state sync of the bot's account with the bot's filter returns (bytes, rooms,
   seconds; an admin-API login as the bot, which creates no device).
4. Steady state: those 100 people each log in a new device with keys, unsigned (at once, 8 at
   a time); the seconds from each upload to the bot's ``alerts`` row, and to the alert DM sent
   (``outbox``), p50 and max; who got alerts (exactly those 100) and whose remembered sessions
   changed. Includes the bot's ``alerts.debounce_seconds`` (5, its default).
5. Memory and disk: the bot's peak RSS (``VmHWM``) in the campaign process and in the restarted
   one, the settled ``VmRSS`` once the restarted bot is idle (10,000 people known, ~6,000 DMs),
   and its database size. Above the target, where the memory goes: the RSS of a fresh
   interpreter that only imports the bot (the floor under any data), the largest mappings
   (``/proc/<pid>/smaps``) and, unless ``--no-tracemalloc``, one more restart under
   ``tracemalloc`` (several minutes with 6,000 DMs) with the Python allocations by package.

At the end the added devices and the asker's device are logged out and bot B is deactivated
(the bench waits until Synapse has parted it from its rooms), so the world is the same for the
next run. Targets are printed as ratios with PASS/MISS, never asserted. Synapse and every bot
process are stopped by the PID they were started with, also on errors or Ctrl-C.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from nerbot.localdev.accounts import AccountBuilder, BuiltAccount
from nerbot.localdev.configfile import toml_text
from nerbot.localdev.peer import E2EEPeer
from nerbot.localdev.synapse import LocalSynapse, SynapseError
from nerbot.logs import configure_logging
from nerbot.matrix.http import MatrixHttp
from nerbot.matrix.keys import DEFAULT_BATCH, KEYS_QUERY
from nerbot.matrix.syncer import SYNC_FILTER

logger = logging.getLogger("bench.scale")

T = TypeVar("T")

DEFAULT_PEOPLE = 10_000
DEFAULT_CEILING = 180  # per minute; see bench/README.md ("scale.py") for why
DEFAULT_WORKERS = 12
DEFAULT_VERIFY = 300
RECOVERY_SHARE = 0.95  # of the people with cross-signing: backup + secret storage
CHANGED_PEOPLE = 100
EDGE = 200  # the first and the last this many DMs of the campaign
BUILD_BUDGET_MINUTES = 20
ALL_PHASES = (1, 2, 3, 4, 5)

TARGET_SCAN = 2.0       # cold scan / raw /keys/query, at most
TARGET_RESCAN = 0.1     # unchanged rescan / raw, at most
TARGET_RATE = 0.9       # achieved send rate / ceiling, at least
TARGET_DRIFT = 1.2      # last 200 DMs / first 200, at most
TARGET_RESTART = 10.0   # seconds from process start to the first answered !help, at most
TARGET_RSS_MB = 150.0   # settled RSS, at most

WORLD_FILE = "world.json"
PARTIAL_FILE = "world.partial.jsonl"
MARKER_FILE = ".nerbot-scale"  # written into a workdir this bench made; --rebuild needs it
WORLD_VERSION = 1

RUNNING_RE = re.compile(r"nerbot is running as (\S+)")
LOGGED_IN_RE = re.compile(r"Logged in as \S+ on device \S+")
SCAN_RE = re.compile(r"Reminder scan: (\d+) users, (\d+) queued, held (\{.*?\}), (\d+) failed "
                     r"\(([\d.]+) s\)")
FACTS_RE = re.compile(r"Facts for (\d+) people in ([\d.]+) s: keys ([\d.]+) s, admin API "
                      r"([\d.]+) s, (\d+) unchanged since read")
FIRST_SYNC_RE = re.compile(r"First sync(?: \(([a-z ]+)\))?: (\d+) joined rooms, (\d+) invites, "
                           r"([\d.]+) s")
LOG_TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")
HELP_MARK = "show this list"  # in the answer to !help (en)

_CLIENT = "/_matrix/client/v3"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def mb(kib: int | float) -> float:
    return kib / 1024.0


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    return f"{seconds / 3600:.1f} h"


def spread(items: list[T], count: int) -> list[T]:
    """``count`` items spread evenly over the list (all of them if it is shorter)."""
    if count >= len(items):
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def parallel(items: Iterable[T], work: Callable[[T], Any], workers: int) -> list[Any]:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(work, items))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the report ---------------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    value: str
    target: str = ""
    ratio: str = ""
    result: str = ""


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)

    def line(self, text: str) -> None:
        logger.info("%s", text)
        self.lines.append(text)

    def row(self, figure: str, value: str, target: str = "", ratio: str = "",
            result: str = "") -> None:
        self.rows.append(Row(figure, value, target, ratio, result))

    def render(self) -> list[str]:
        out = list(self.lines)
        if self.rows:
            headers = Row("figure", "value", "target", "ratio", "")
            table = [headers, *self.rows]
            widths = [max(len(getattr(r, name)) for r in table)
                      for name in ("figure", "value", "target", "ratio", "result")]
            out.append("")
            for r in table:
                cells = (r.figure, r.value, r.target, r.ratio, r.result)
                out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
                           .rstrip())
        return out


# -- the world ----------------------------------------------------------------------------------


@dataclass
class Person:
    index: int
    user_id: str
    password: str
    device_id: str
    token: str
    devices: int
    cross_signing: bool
    signed: int
    recovery: bool  # key backup and secret storage

    @property
    def at_risk(self) -> bool:
        """At risk under the default ``remind_about``, as the bot sees it with the admin token
        (secret storage visible, backup not checked)."""
        return not self.cross_signing or not self.recovery or self.signed < self.devices


@dataclass
class World:
    path: Path
    seed: int
    server_name: str
    admin_id: str
    admin_password: str
    admin_token: str
    people: list[Person]
    bots: list[dict[str, Any]] = field(default_factory=list)
    build: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def save(self) -> None:
        with self._lock:
            data = {"version": WORLD_VERSION, "seed": self.seed, "server_name": self.server_name,
                    "admin": {"user_id": self.admin_id, "password": self.admin_password,
                              "token": self.admin_token},
                    "bots": self.bots, "build": self.build,
                    "people": [asdict(p) for p in self.people]}
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
            tmp.replace(self.path)

    @classmethod
    def load(cls, path: Path) -> World:
        data = json.loads(path.read_text())
        if data.get("version") != WORLD_VERSION:
            raise RuntimeError(f"{path} is version {data.get('version')}, not {WORLD_VERSION}; "
                               "use --rebuild")
        admin = data["admin"]
        return cls(path, int(data["seed"]), str(data["server_name"]), admin["user_id"],
                   admin["password"], admin["token"], [Person(**p) for p in data["people"]],
                   list(data.get("bots", [])), dict(data.get("build", {})))

    def summary(self) -> str:
        people = self.people
        return (f"{len(people)} people, {sum(p.devices for p in people)} devices, "
                f"cross-signing {sum(p.cross_signing for p in people)}, backup + secret storage "
                f"{sum(p.recovery for p in people)}, at risk {sum(p.at_risk for p in people)}")


def plan_world(n: int, seed: int) -> list[tuple[int, bool, list[bool], bool]]:
    """``plan_many``'s mix plus who of the cross-signers has backup + secret storage.

    Both random streams depend only on the seed and the position, so a bigger world starts
    with the same people as a smaller one.
    """
    rng = random.Random(seed + 1)
    return [(devices, cross, signed, cross and rng.random() < RECOVERY_SHARE)
            for devices, cross, signed in AccountBuilder.plan_many(n, seed)]


class Progress:
    """Counts finished items from many threads; logs done/total, rate and ETA every few s."""

    def __init__(self, what: str, total: int, every: float = 5.0,
                 on_rate: Callable[[float, int], None] | None = None) -> None:
        self.what, self.total, self.every = what, total, every
        self.done = 0
        self.started = time.monotonic()
        self._last = self.started
        self._lock = threading.Lock()
        self._on_rate = on_rate

    def step(self) -> None:
        with self._lock:
            self.done += 1
            now = time.monotonic()
            if now - self._last < self.every and self.done < self.total:
                return
            self._last = now
            elapsed = now - self.started
            rate = self.done / elapsed if elapsed > 0 else 0.0
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            logger.info("%s: %d/%d (%.1f %%), %.1f/s, ETA %s", self.what, self.done, self.total,
                        100.0 * self.done / self.total, rate, duration(left))
            if self._on_rate is not None:
                self._on_rate(rate, self.done)


def _admin_user_path(user_id: str) -> str:
    return LocalSynapse.api_path("/_synapse/admin/v2/users/{}", user_id)


def build_person(synapse: LocalSynapse, builder: AccountBuilder, admin_token: str, index: int,
                 plan: tuple[int, bool, list[bool], bool]) -> Person:
    """One person, from nothing. Setting the password through the admin API also logs out
    every device, so a person half-built by an interrupted run starts over cleanly."""
    devices, cross, signed, recovery = plan
    localpart = f"p{index:05d}"
    user_id = synapse.user_id(localpart)
    password = secrets.token_urlsafe(12)
    synapse.request("PUT", _admin_user_path(user_id),
                    {"password": password, "displayname": f"Person {index}"}, token=admin_token)
    account = BuiltAccount(user_id=user_id, localpart=localpart, password=password)
    builder.equip(account, devices, cross, signed, device_label="scale device")
    if cross and recovery:
        builder.create_backup(account)
        builder.set_up_secret_storage(account)
    first = next(iter(account.devices.values()))
    return Person(index, user_id, password, first.device_id, first.access_token, devices,
                  cross, sum(signed) if cross else 0, recovery)


def make_admin(synapse: LocalSynapse, builder: AccountBuilder) -> tuple[str, str, str]:
    """The server admin: a token for the bench and the bot, and a healthy account of its own
    (cross-signing, backup, secret storage; its token's device has no keys), so the bot's
    all-local scan never finds it at risk."""
    password = secrets.token_urlsafe(16)
    user_id = synapse.register_user("scale-admin", password, admin=True)
    token = synapse.admin_access_token("scale-admin", password)
    account = BuiltAccount(user_id=user_id, localpart="scale-admin", password=password)
    builder.set_up_cross_signing(account)
    builder.create_backup(account)
    builder.set_up_secret_storage(account)
    return user_id, password, token


def build_world(synapse: LocalSynapse, workdir: Path, people: int, seed: int, workers: int,
                report: Report) -> World:
    """Load ``world.json`` or build (or finish, or extend) the world; blocking."""
    world_path, partial_path = workdir / WORLD_FILE, workdir / PARTIAL_FILE
    builder = AccountBuilder(synapse)
    world: World
    built: dict[int, Person] = {}
    if world_path.exists():
        world = World.load(world_path)
        if world.seed != seed:
            report.line(f"note: the world was built with seed {world.seed}; --seed {seed} is "
                        "ignored (use --rebuild for another mix)")
        if len(world.people) >= people:
            if len(world.people) > people:
                report.line(f"note: the world has {len(world.people)} people; the bot scans every "
                            f"local user, so all of them take part (not {people})")
            return world
        built = {p.index: p for p in world.people}
        logger.info("Extending the world from %d to %d people", len(built), people)
    elif partial_path.exists():
        lines = partial_path.read_text().splitlines()
        head = json.loads(lines[0])
        admin = head["admin"]
        world = World(world_path, int(head["seed"]), synapse.server_name, admin["user_id"],
                      admin["password"], admin["token"], [])
        for line in lines[1:]:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                person = Person(**json.loads(line))
                built[person.index] = person
        logger.info("Resuming an interrupted build: %d people were built", len(built))
    else:
        (workdir / MARKER_FILE).write_text("made by bench/scale.py\n")
        admin_id, admin_password, admin_token = make_admin(synapse, builder)
        world = World(world_path, seed, synapse.server_name, admin_id, admin_password,
                      admin_token, [])
        fd = os.open(partial_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps({"seed": seed, "admin": {
                "user_id": admin_id, "password": admin_password, "token": admin_token}}) + "\n")
        logger.info("Admin %s registered", admin_id)

    plan = plan_world(people, world.seed)
    todo = [i for i in range(people) if i not in built]
    warned = False

    def projection(rate: float, done: int) -> None:
        nonlocal warned
        if warned or done < 100 or rate <= 0:
            return
        warned = True
        minutes = DEFAULT_PEOPLE / rate / 60
        logger.info("Build rate %.1f people/s: %d people would take %.0f min", rate,
                    DEFAULT_PEOPLE, minutes)
        if minutes > BUILD_BUDGET_MINUTES:
            logger.warning("%d people would take more than %d min on this machine; building "
                           "the %d asked for", DEFAULT_PEOPLE, BUILD_BUDGET_MINUTES, people)

    started = time.monotonic()
    if todo:
        logger.info("Building %d people with %d workers", len(todo), workers)
        progress = Progress("built", len(todo), on_rate=projection)
        lock = threading.Lock()
        with partial_path.open("a") as out, ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(build_person, synapse, builder, world.admin_token, i,
                                   plan[i]): i for i in todo}
            for future in as_completed(futures):
                person = future.result()
                with lock:
                    out.write(json.dumps(asdict(person)) + "\n")
                    out.flush()
                built[person.index] = person
                progress.step()
    seconds = time.monotonic() - started
    world.people = [built[i] for i in sorted(built)]
    previous = float(world.build.get("seconds", 0.0))
    world.build = {"seconds": previous + seconds, "workers": workers,
                   "people_per_second": len(todo) / seconds if todo and seconds else None,
                   "finished": datetime.now(UTC).isoformat(timespec="seconds")}
    world.save()
    partial_path.unlink(missing_ok=True)
    if todo:
        rate = len(todo) / seconds
        report.line(f"built {len(todo)} people in {duration(seconds)} ({rate:.1f} people/s, "
                    f"{workers} workers); {DEFAULT_PEOPLE} people at this rate: "
                    f"{duration(DEFAULT_PEOPLE / rate)}")
    return world


def wipe_world(workdir: Path) -> None:
    """``--rebuild``: remove what this bench made in ``workdir`` (it must carry the marker)."""
    if not (workdir / MARKER_FILE).exists():
        if (workdir / "synapse").exists() or (workdir / WORLD_FILE).exists():
            raise RuntimeError(f"{workdir} was not made by bench/scale.py (no {MARKER_FILE}); "
                               "not removing anything")
        return
    logger.info("--rebuild: removing the world in %s", workdir)
    shutil.rmtree(workdir / "synapse", ignore_errors=True)
    for name in (WORLD_FILE, PARTIAL_FILE):
        (workdir / name).unlink(missing_ok=True)


# -- bot accounts -------------------------------------------------------------------------------


def register_bot(synapse: LocalSynapse, world: World, role: str) -> tuple[str, str]:
    localpart = f"scalebot-{datetime.now(UTC):%m%d%H%M}-{secrets.token_hex(2)}-{role}"
    password = secrets.token_urlsafe(16)
    user_id = synapse.register_user(localpart, password)
    world.bots.append({"user_id": user_id, "role": role, "deactivated": False})
    world.save()
    return user_id, password


def joined_rooms(synapse: LocalSynapse, token: str, user_id: str) -> list[str]:
    path = LocalSynapse.api_path("/_synapse/admin/v1/users/{}/joined_rooms", user_id)
    return [str(r) for r in synapse.request("GET", path, token=token).get("joined_rooms", [])]


def retire_bots(synapse: LocalSynapse, world: World, timeout: float = 1800.0) -> float:
    """Deactivate every bot account of this bench still active (an all-local scan would
    count them) and wait until Synapse parted them from their rooms; returns the seconds."""
    started = time.monotonic()
    waiting = []
    for bot in world.bots:
        if bot.get("deactivated"):
            continue
        path = LocalSynapse.api_path("/_synapse/admin/v1/deactivate/{}", bot["user_id"])
        synapse.request("POST", path, {"erase": False}, token=world.admin_token, timeout=300)
        bot["deactivated"] = True
        waiting.append(bot["user_id"])
    world.save()
    last_log = 0.0
    for user_id in waiting:
        while True:
            left = len(joined_rooms(synapse, world.admin_token, user_id))
            if left == 0:
                break
            if time.monotonic() - started > timeout:
                logger.warning("%s is still in %d rooms after %s; going on", user_id, left,
                               duration(timeout))
                break
            if time.monotonic() - last_log > 10:
                last_log = time.monotonic()
                logger.info("Synapse is parting deactivated %s from its rooms: %d left",
                            user_id, left)
            time.sleep(2)
    seconds = time.monotonic() - started
    if waiting:
        logger.info("Deactivated %s in %s", ", ".join(waiting), duration(seconds))
    return seconds


# -- the bot as a subprocess --------------------------------------------------------------------


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    path.write_text(toml_text(sections))


def log_time(line: str) -> float | None:
    """The wall-clock time of a bot log line (``%(asctime)s``: local time, milliseconds)."""
    match = LOG_TIME_RE.match(line)
    if match is None:
        return None
    stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
    return stamp.timestamp() + int(match.group(2)) / 1000.0


@dataclass
class Found:
    match: re.Match[str]
    at: float  # wall clock, from the line (or when it was read)
    index: int  # line number in this process's output


def facts_split(bot: BotProcess, scan: Found) -> str:
    """Where a scan's time went, from the bot's "Facts for …" line just before its scan line
    (logged by versions that log it)."""
    for line in reversed(bot.lines[:scan.index]):
        found = FACTS_RE.search(line)
        if found:
            return (f"; facts: keys {float(found.group(3)):.1f} s, admin API "
                    f"{float(found.group(4)):.1f} s, {found.group(5)} people unchanged since "
                    f"read")
        if SCAN_RE.search(line):
            break
    return ""


class BotProcess:
    """``python -m nerbot run -c CONFIG``: started, watched (log, /proc) and stopped by PID."""

    def __init__(self, name: str, config: Path, log_path: Path, env: dict[str, str],
                 prefix: list[str] | None = None) -> None:
        self.name, self.config, self.log_path, self.env = name, config, log_path, env
        self.prefix = prefix or ["-m", "nerbot"]
        self.process: subprocess.Popen[bytes] | None = None
        self.started_wall = 0.0
        self.started = 0.0
        self._offset = 0
        self._buffer = ""
        self.lines: list[str] = []

    def start(self) -> None:
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._buffer, self.lines = "", []
        with self.log_path.open("ab") as log:
            self.started_wall, self.started = time.time(), time.monotonic()
            self.process = subprocess.Popen(
                [sys.executable, *self.prefix, "run", "-c", str(self.config)],
                cwd=self.config.parent, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        logger.info("Started bot %s (PID %d), log %s", self.name, self.process.pid,
                    self.log_path)

    @property
    def pid(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None
        return int(self.process.pid)

    def signal(self, sig: signal.Signals) -> None:
        if self.pid is not None and self.process is not None:
            self.process.send_signal(sig)

    def stop(self, timeout: float = 120.0) -> float:
        """SIGTERM (the bot stops cleanly), SIGKILL after ``timeout``; returns the seconds."""
        process, started = self.process, time.monotonic()
        if process is None:
            return 0.0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("Bot %s (PID %d) ignored SIGTERM for %.0f s; killing it",
                               self.name, process.pid, timeout)
                process.kill()
                process.wait(timeout=30)
        self.read()
        return time.monotonic() - started

    def status(self) -> dict[str, int]:
        """``VmRSS``, ``VmHWM`` (peak) … in KiB, from ``/proc/<pid>/status``."""
        out: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key.startswith("Vm") or key.startswith("Rss"):
                    with contextlib.suppress(ValueError, IndexError):
                        out[key] = int(value.split()[0])
        return out

    def cpu_seconds(self) -> float:
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return 0.0

    def read(self) -> None:
        """Take in what the process wrote since the last call (complete lines only)."""
        with contextlib.suppress(OSError), self.log_path.open("rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
            self._offset += len(chunk)
            self._buffer += chunk.decode(errors="replace")
        *complete, self._buffer = self._buffer.split("\n")
        self.lines.extend(complete)

    def find(self, pattern: re.Pattern[str], after: int = 0) -> Found | None:
        self.read()
        for index in range(after, len(self.lines)):
            match = pattern.search(self.lines[index])
            if match is not None:
                return Found(match, log_time(self.lines[index]) or time.time(), index)
        return None

    def find_all(self, pattern: re.Pattern[str]) -> list[Found]:
        self.read()
        return [Found(m, log_time(line) or time.time(), i) for i, line in enumerate(self.lines)
                if (m := pattern.search(line)) is not None]

    async def wait_for(self, pattern: re.Pattern[str], within: float, after: int = 0,
                       what: str = "") -> Found:
        deadline = time.monotonic() + within
        while True:
            found = self.find(pattern, after)
            if found is not None:
                return found
            if self.pid is None:
                raise RuntimeError(f"bot {self.name} exited (code "
                                   f"{self.process.returncode if self.process else None}) "
                                   f"before {what or pattern.pattern}; see {self.log_path}\n"
                                   + "\n".join(self.lines[-15:]))
            if time.monotonic() > deadline:
                raise TimeoutError(f"bot {self.name}: no {what or pattern.pattern} within "
                                   f"{within:.0f} s; see {self.log_path}")
            await asyncio.sleep(0.2)

    async def idle(self, quiet: float = 3.0, limit: float = 120.0,
                   threshold: float = 0.05) -> float:
        """Wait until the bot used under ``threshold`` of a core for ``quiet`` s; the wait."""
        started = time.monotonic()
        while time.monotonic() - started < limit:
            before = self.cpu_seconds()
            await asyncio.sleep(quiet)
            if self.cpu_seconds() - before < threshold * quiet:
                break
        return time.monotonic() - started


class BotDb:
    """The bot's SQLite database, read-only, from outside the bot."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def rows(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        for attempt in range(20):
            try:
                if self._conn is None:
                    self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                                 timeout=10, isolation_level=None,
                                                 check_same_thread=False)
                return self._conn.execute(sql, list(args)).fetchall()
            except sqlite3.OperationalError:
                if attempt == 19:
                    raise
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                time.sleep(0.25)
        return []

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def size(self) -> int:
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal"),
                                              Path(f"{self.path}-shm")) if p.exists())


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- measurements from outside ------------------------------------------------------------------


async def raw_keys_query(url: str, token: str, users: list[str], repeats: int = 3
                         ) -> tuple[list[float], int]:
    """The server's cost: batched ``/keys/query`` for everyone, JSON parsed, nothing else."""
    http = MatrixHttp(url, token)
    times, devices = [], 0
    try:
        for _ in range(repeats):
            started = time.perf_counter()
            devices = 0
            for start in range(0, len(users), DEFAULT_BATCH):
                batch = users[start:start + DEFAULT_BATCH]
                _, response = await http.request(
                    "POST", KEYS_QUERY, {"device_keys": {u: [] for u in batch}, "timeout": 10000})
                devices += sum(len(d) for d in response.get("device_keys", {}).values())
            times.append(time.perf_counter() - started)
    finally:
        await http.close()
    return times, devices


def first_sync_from_outside(synapse: LocalSynapse, admin_token: str, bot_id: str
                            ) -> tuple[int, int, float]:
    """A full-state sync of the bot's account with the bot's filter: (bytes, rooms, seconds).

    Logged in through the admin API (no device is created: the bot's own-account check never
    sees it), logged out afterwards.
    """
    path = LocalSynapse.api_path("/_synapse/admin/v1/users/{}/login", bot_id)
    token = str(synapse.request("POST", path, {}, token=admin_token)["access_token"])
    try:
        query = urllib.parse.urlencode({"filter": json.dumps(SYNC_FILTER, separators=(",", ":")),
                                        "full_state": "true", "timeout": "0"})
        request = urllib.request.Request(f"{synapse.url}{_CLIENT}/sync?{query}",
                                         headers={"Authorization": f"Bearer {token}"})
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=1800) as response:
            raw = response.read()
        seconds = time.perf_counter() - started
        rooms = len(json.loads(raw).get("rooms", {}).get("join", {}))
        return len(raw), rooms, seconds
    finally:
        with contextlib.suppress(SynapseError, OSError):
            synapse.logout(token)


def smaps_top(pid: int, count: int = 8) -> list[str]:
    """The mappings holding most of a process's RSS, grouped by what is mapped."""
    sizes: dict[str, int] = {}
    current = "[anon]"
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        parts = line.split()
        if parts and re.match(r"^[0-9a-f]+-[0-9a-f]+$", parts[0]):
            current = parts[5] if len(parts) > 5 else "[anon]"
            current = Path(current).name if current.startswith("/") else current
        elif parts and parts[0] == "Rss:":
            sizes[current] = sizes.get(current, 0) + int(parts[1])
    top = sorted(sizes.items(), key=lambda kv: -kv[1])[:count]
    return [f"{name} {mb(kib):.1f} MB" for name, kib in top]


IMPORT_FLOOR_PROBE = ("import nerbot.app, re; print(re.search(r'VmRSS:\\s+(\\d+)', "
                      "open('/proc/self/status').read()).group(1))")


def import_floor_rss(env: dict[str, str]) -> float | None:
    """RSS (MB) of a fresh interpreter that only imports the bot's code and its libraries.

    What any bot process holds before it knows a single person (nio, aiohttp,
    simplematrixbotlib, sqlite-utils, APScheduler, emoji, prometheus-client and nerbot):
    the settled RSS above it is the data. None if the probe fails."""
    try:
        done = subprocess.run([sys.executable, "-c", IMPORT_FLOOR_PROBE], capture_output=True,
                              text=True, timeout=120, check=True, env=env)
        return mb(int(done.stdout.strip()))
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def trimmed_rss(pid: int) -> float | None:
    """What-if: the bot's RSS (MB) after glibc's ``malloc_trim(0)``, called in it through gdb.

    The difference is heap the bot freed but glibc kept (it returns memory to the system only
    from the top of an arena). Needs gdb and ptrace rights; None without them."""
    gdb = shutil.which("gdb")
    if gdb is None:
        return None
    try:
        subprocess.run([gdb, "-p", str(pid), "-batch", "-nx", "-ex",
                        "call (int) malloc_trim(0)"], capture_output=True, timeout=120,
                       check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+)", status)
    return mb(int(found.group(1))) if found else None


TRACEMALLOC_BOOT = """\
import runpy, signal, sys, tracemalloc
tracemalloc.start(1)
out = sys.argv[1]
def dump(signum, frame):
    snapshot = tracemalloc.take_snapshot()
    by_package = {}
    for stat in snapshot.statistics("filename"):
        name = stat.traceback[0].filename
        marker = "site-packages/"
        if marker in name:
            key = name.split(marker, 1)[1].split("/", 1)[0]
        elif "/nerbot/" in name:
            key = "nerbot/" + name.split("/nerbot/", 1)[1].split("/", 1)[0]
        elif name.startswith("<frozen importlib"):
            key = "imports (module code)"
        elif "/lib/python3" in name:
            key = "stdlib " + name.split("/lib/python3", 1)[1].split("/")[1]
        else:
            key = name
        by_package[key] = by_package.get(key, 0) + stat.size
    top_files = snapshot.statistics("lineno")[:12]
    with open(out, "w") as fh:
        fh.write(f"traced {sum(by_package.values())}\\n")
        for key, size in sorted(by_package.items(), key=lambda kv: -kv[1])[:15]:
            fh.write(f"package {size} {key}\\n")
        for stat in top_files:
            frame = stat.traceback[0]
            fh.write(f"line {stat.size} {frame.filename}:{frame.lineno}\\n")
signal.signal(signal.SIGUSR1, dump)
sys.argv = ["nerbot", *sys.argv[2:]]
runpy.run_module("nerbot", run_name="__main__", alter_sys=True)
"""


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Campaign:
    """What the later phases need from phase 2."""

    bot_id: str
    bot: BotProcess
    db: BotDb
    data_dir: Path
    asker: Person
    peer: E2EEPeer
    room_id: str
    dms: dict[str, str]  # user → DM room, from the bot's database
    hwm_campaign_kib: int = 0
    restarted: bool = False
    changed: list[Person] = field(default_factory=list)
    added_tokens: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, synapse: LocalSynapse,
                 world: World, report: Report) -> None:
        self.args, self.workdir, self.synapse, self.world, self.report = (
            args, workdir, synapse, world, report)
        self.run_dir = workdir / "runs" / datetime.now().strftime("%Y%m%d-%H%M%S")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.bots: list[BotProcess] = []
        self.peers: list[E2EEPeer] = []
        self.raw_seconds: float | None = None
        self.ceiling: int = args.ceiling
        self.campaign: Campaign | None = None  # set from the campaign to its cleanup

    # -- plumbing -------------------------------------------------------------------------

    def bot(self, name: str, bot_id: str, password: str, scan_every: str, quiet_hours: str,
            data_dir: Path | None = None, prefix: list[str] | None = None) -> BotProcess:
        data_dir = data_dir or self.run_dir / f"{name}-data"
        config = self.run_dir / f"{name}.toml"
        write_config(config, {
            "matrix": {"homeserver": self.synapse.url, "user_id": bot_id,
                       "device_name": "nerbot"},
            "storage": {"data_dir": str(data_dir)},
            "bot": {"language": "en"},
            "synapse_admin": {"backup_check": "off"},
            "reminders": {"enabled": True, "scope": "all-local", "scan_every": scan_every,
                          "grace": "0", "quiet_hours": quiet_hours, "timezone": "UTC",
                          "backoff": ["30d"], "max_sends_per_minute": self.ceiling},
            "alerts": {"enabled": True},
            "logging": {"level": "INFO"},
        })
        env = dict(os.environ)
        env.pop("NERBOT_METRICS_LISTEN", None)
        env.update({"NERBOT_PASSWORD": password, "NERBOT_ADMIN_TOKEN": self.world.admin_token})
        process = BotProcess(name, config, self.run_dir / f"{name}.log", env, prefix)
        self.bots.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.bots:
            process.stop()

    def people_ids(self) -> list[str]:
        return [p.user_id for p in self.world.people]

    # -- phase 1 --------------------------------------------------------------------------

    async def phase_scan(self) -> None:
        report, world = self.report, self.world
        users = self.people_ids()
        times, devices = await raw_keys_query(self.synapse.url, world.admin_token, users)
        raw = self.raw_seconds = statistics.median(times)
        report.line(f"(1) raw /keys/query of {len(users)} people in batches of {DEFAULT_BATCH}: "
                    f"{raw:.2f} s (median of {', '.join(f'{t:.2f}' for t in times)}; "
                    f"{devices} devices)")
        report.row("raw /keys/query, N people", f"{raw:.2f} s", "baseline")

        bot_id, password = await asyncio.to_thread(register_bot, self.synapse, world, "scan")
        now = datetime.now(UTC)
        minute = now.hour * 60 + now.minute
        start, end = (minute - 1) % 1440, (minute - 2) % 1440  # all day but a minute just gone
        quiet = f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
        bot = self.bot("scan", bot_id, password, scan_every="5m", quiet_hours=quiet)
        bot.start()
        try:
            running = await bot.wait_for(RUNNING_RE, 600, what="start")
            report.line(f"    bot A (first start, nothing to resume): running "
                        f"{running.at - bot.started_wall:.1f} s after process start")
            first = await bot.wait_for(SCAN_RE, 3600, what="the first scan")
            cold = float(first.match.group(5))
            held = ast.literal_eval(first.match.group(3))
            expected = sum(p.at_risk for p in world.people)
            report.line(f"    cold scan: {first.match.group(1)} users in {cold:.1f} s "
                        f"(started {first.at - cold - bot.started_wall:.1f} s after process "
                        f"start); held {held}, {first.match.group(4)} failed; at risk by the "
                        f"world: {expected} people{facts_split(bot, first)}")
            report.row("cold scan (bot A, quiet hours)", f"{cold:.1f} s", f"<= {TARGET_SCAN}x raw",
                       f"{cold / raw:.2f}", verdict(cold / raw <= TARGET_SCAN))
            rescan = await self._next_scan(bot, first)
            warm = float(rescan.match.group(5))
            report.line(f"    unchanged rescan (the scheduler's, {rescan.at - first.at:.0f} s "
                        f"after the first ended): {rescan.match.group(1)} users in {warm:.1f} s; "
                        f"held {ast.literal_eval(rescan.match.group(3))}"
                        f"{facts_split(bot, rescan)}")
            report.row("unchanged rescan (bot A, +5 min)", f"{warm:.1f} s",
                       f"<= {TARGET_RESCAN}x raw", f"{warm / raw:.3f}",
                       verdict(warm / raw <= TARGET_RESCAN))
            status = bot.status()
            report.line(f"    bot A RSS after two scans: {mb(status.get('VmRSS', 0)):.0f} MB, "
                        f"peak {mb(status.get('VmHWM', 0)):.0f} MB")
        finally:
            bot.stop()
        await asyncio.to_thread(retire_bots, self.synapse, world)

    async def _next_scan(self, bot: BotProcess, first: Found) -> Found:
        """The first scan that started after ``first`` ended (a cold scan longer than
        ``scan_every`` overlaps the scheduler's first one, which then does not count)."""
        deadline = time.monotonic() + 5 * 60 + max(900.0, 3 * float(first.match.group(5)))
        after = first.index + 1
        while True:
            found = await bot.wait_for(SCAN_RE, max(1.0, deadline - time.monotonic()),
                                       after=after, what="the scheduled rescan")
            if found.at - float(found.match.group(5)) >= first.at - 0.5:
                return found
            logger.info("A scan overlapped the cold one; waiting for the next")
            after = found.index + 1

    # -- phase 2 --------------------------------------------------------------------------

    async def phase_campaign(self) -> Campaign:
        report, world, synapse = self.report, self.world, self.synapse
        bot_id, password = await asyncio.to_thread(register_bot, synapse, world, "campaign")
        asker = next(p for p in world.people
                     if not p.cross_signing and p.devices == 1)
        peer = await E2EEPeer.login(synapse.url, asker.user_id, asker.password,
                                    self.run_dir / "asker", device_name="scale asker")
        self.peers.append(peer)
        peer.start()
        await peer.wait_synced(timeout=300)
        room_id = await peer.create_encrypted_dm(bot_id)
        report.line(f"(2) campaign: bot B {bot_id}, ceiling {self.ceiling}/min "
                    f"({self.ceiling / 60:.2f}/s); the asker {asker.user_id} opened DM {room_id}")

        data_dir = self.run_dir / "campaign-data"
        bot = self.bot("campaign", bot_id, password, scan_every="6h", quiet_hours="",
                       data_dir=data_dir)
        bot.start()
        db = BotDb(data_dir / "nerbot.db")
        running = await bot.wait_for(RUNNING_RE, 600, what="start")
        report.line(f"    bot B running {running.at - bot.started_wall:.1f} s after process start")
        warm_up = asyncio.create_task(self._warm_up(peer, room_id, bot_id))
        scan = await bot.wait_for(SCAN_RE, 3600, what="the campaign's scan")
        seconds, queued = float(scan.match.group(5)), int(scan.match.group(2))
        expected = sum(p.at_risk for p in world.people)
        report.line(f"    its scan (cold, queues the campaign): {scan.match.group(1)} users in "
                    f"{seconds:.1f} s; queued {queued} (at risk by the world: {expected}), held "
                    f"{ast.literal_eval(scan.match.group(3))}, {scan.match.group(4)} failed"
                    f"{facts_split(bot, scan)}")
        if self.raw_seconds is not None:
            ratio = seconds / self.raw_seconds
            report.row("cold scan + queue (bot B)", f"{seconds:.1f} s", f"<= {TARGET_SCAN}x raw",
                       f"{ratio:.2f}", verdict(ratio <= TARGET_SCAN))
        else:
            report.row("cold scan + queue (bot B)", f"{seconds:.1f} s", "(no raw: phase 1 off)")
        rows = await self._wait_campaign(bot, db, queued)
        with contextlib.suppress(Exception):
            report.line(f"    warm-up !help from the asker during the campaign: answered in "
                        f"{await asyncio.wait_for(warm_up, 600):.1f} s")
        campaign = Campaign(bot_id, bot, db, data_dir, asker, peer, room_id,
                            {str(u): str(r) for u, r in
                             db.rows("SELECT user_id, room_id FROM dm_rooms")})
        self.campaign = campaign
        campaign.hwm_campaign_kib = bot.status().get("VmHWM", 0)
        self._campaign_figures(rows, queued)
        await asyncio.to_thread(self._server_check, campaign, rows)
        return campaign

    async def _warm_up(self, peer: E2EEPeer, room_id: str, bot_id: str) -> float:
        await peer.wait_for_join(room_id, bot_id, timeout=600)
        started = time.monotonic()
        await self._ask_help(peer, room_id, bot_id, within=600)
        return time.monotonic() - started

    @staticmethod
    async def _ask_help(peer: E2EEPeer, room_id: str, bot_id: str, within: float) -> None:
        for item in peer.inbox:
            item.consumed = True  # only an answer to this !help counts
        await peer.send_text(room_id, "!help", timeout=within)
        await peer.wait_for_message(room_id, sender=bot_id, timeout=within,
                                    predicate=lambda e: HELP_MARK in str(e.body))

    async def _wait_campaign(self, bot: BotProcess, db: BotDb, queued: int
                             ) -> list[tuple[Any, ...]]:
        """Until every queued reminder is sent (or failed for good); the reminder rows."""
        started = time.monotonic()
        limit = 900.0 + 3.0 * queued * 60.0 / self.ceiling
        last_log, last_sent = 0.0, (time.monotonic(), 0)
        sql = ("SELECT user_id, status, created_ms, sent_ms, room_id, event_id, attempts "
               "FROM outbox WHERE kind = 'remind'")
        while True:
            rows = await asyncio.to_thread(db.rows, sql)
            sent = sum(r[1] == "sent" for r in rows)
            pending = sum(r[1] == "pending" for r in rows)
            if len(rows) >= queued and pending == 0:
                return rows
            if bot.pid is None:
                raise RuntimeError(f"bot B exited during the campaign; see {bot.log_path}")
            now = time.monotonic()
            if now - started > limit:
                logger.warning("Campaign: %d of %d sent after %s; going on", sent, queued,
                               duration(now - started))
                return rows
            if now - last_log > 15:
                rate = (sent - last_sent[1]) / (now - last_sent[0])
                left = (queued - sent) / rate if rate > 0 else float("inf")
                logger.info("Campaign: %d/%d sent, %d pending, %.2f DMs/s now, ETA %s", sent,
                            queued, pending, rate, duration(left))
                last_log, last_sent = now, (now, sent)
            await asyncio.sleep(2)

    def _campaign_figures(self, rows: list[tuple[Any, ...]], queued: int) -> None:
        report = self.report
        sent = sorted(int(r[3]) for r in rows if r[1] == "sent" and r[3] is not None)
        failed = sum(r[1] == "failed" for r in rows)
        pending = sum(r[1] == "pending" for r in rows)
        if len(sent) < 2:
            report.line(f"    campaign: {len(sent)} sent; nothing to measure")
            return
        span = (sent[-1] - sent[0]) / 1000.0
        rate = (len(sent) - 1) / span if span > 0 else float("inf")
        ceiling = self.ceiling / 60.0
        report.line(f"    sent {len(sent)} of {len(rows)} reminders ({failed} failed, {pending} "
                    f"pending) in {duration(span)}: {rate:.2f} DMs/s; ceiling {ceiling:.2f}/s")
        report.row(f"campaign rate ({len(sent)} DMs)", f"{rate:.2f}/s",
                   f">= {TARGET_RATE}x {ceiling:.2f}/s", f"{rate / ceiling:.3f}",
                   verdict(rate / ceiling >= TARGET_RATE))
        edge = min(EDGE, len(sent) // 2)
        first = (sent[edge - 1] - sent[0]) / 1000.0
        last = (sent[-1] - sent[-edge]) / 1000.0
        floor = (edge - 1) * 60.0 / self.ceiling
        report.line(f"    first {edge} DMs: {first:.1f} s, last {edge}: {last:.1f} s (at the "
                    f"ceiling: {floor:.1f} s)")
        report.row(f"last {edge} / first {edge} DMs", f"{last:.1f} s / {first:.1f} s",
                   f"<= {TARGET_DRIFT}", f"{last / first:.2f}" if first > 0 else "-",
                   verdict(first > 0 and last / first <= TARGET_DRIFT))
        queued_to_first = (sent[0] - min(int(r[2]) for r in rows)) / 1000.0
        report.line(f"    first DM {queued_to_first:.1f} s after the first reminder was queued")

    def _server_check(self, campaign: Campaign, rows: list[tuple[Any, ...]]) -> None:
        """The DMs on the homeserver against the outbox: nothing lost or duplicated."""
        report, synapse, token = self.report, self.synapse, self.world.admin_token
        joined = set(joined_rooms(synapse, token, campaign.bot_id))
        sent = [r for r in rows if r[1] == "sent"]
        per_user: dict[str, int] = {}
        for r in sent:
            per_user[str(r[0])] = per_user.get(str(r[0]), 0) + 1
        sent_rooms = {str(r[4]) for r in sent}
        dm_rooms = set(campaign.dms.values())
        missing = sent_rooms - joined  # recorded as sent to a room the bot is not in
        extra = joined - dm_rooms      # rooms of the bot that no DM record accounts for
        twice = sum(1 for n in per_user.values() if n > 1)
        lost = len(rows) - len(sent)
        report.line(f"    on the server: the bot is in {len(joined)} rooms; {len(dm_rooms)} DMs "
                    f"recorded; {len(sent)} reminders sent to {len(per_user)} people in "
                    f"{len(sent_rooms)} rooms; sent to a room the bot is not in: {len(missing)}; "
                    f"rooms without a DM record: {len(extra)}; people reminded twice: {twice}")
        sample = spread([r for r in sent if r[4] != campaign.room_id],
                        self.args.verify if self.args.verify > 0 else len(sent))

        def read_back(row: tuple[Any, ...]) -> tuple[int, bool] | str:
            path = LocalSynapse.api_path("/_synapse/admin/v1/rooms/{}/messages", str(row[4]))
            try:
                page = synapse.request("GET", f"{path}?dir=b&limit=50", token=token)
            except SynapseError as exc:
                return str(exc)
            mine = [e for e in page.get("chunk", []) if e.get("sender") == campaign.bot_id
                    and e.get("type") == "m.room.encrypted"]
            return len(mine), any(e.get("event_id") == row[5] for e in mine)

        answers = parallel(sample, read_back, 8)
        once = sum(1 for a in answers if a == (1, True))
        errors = [a for a in answers if isinstance(a, str)]
        dup = sum(max(0, a[0] - 1) for a in answers if isinstance(a, tuple))
        absent = sum(1 for a in answers if isinstance(a, tuple) and not a[1])
        report.line(f"    read back {len(sample)} DM rooms: exactly once {once}, missing {absent}, "
                    f"duplicates {dup}, errors {len(errors)}")
        ok = not (lost or missing or extra or twice or dup or absent or errors)
        report.row("lost / duplicated DMs", f"{lost + len(missing) + absent} / "
                   f"{len(extra) + twice + dup}", "0 / 0", "", verdict(ok))

    # -- phase 3 --------------------------------------------------------------------------

    async def phase_restart(self, campaign: Campaign) -> None:
        report, synapse = self.report, self.synapse
        by_id = {p.user_id: p for p in self.world.people}
        candidates = [by_id[u] for u in sorted(campaign.dms, key=lambda u: by_id[u].index
                                               if u in by_id else -1)
                      if u in by_id and u != campaign.asker.user_id]
        campaign.changed = spread(candidates, CHANGED_PEOPLE)

        def join(person: Person) -> None:
            path = LocalSynapse.api_path(f"{_CLIENT}/join/{{}}", campaign.dms[person.user_id])
            synapse.request("POST", path, {}, token=person.token)

        t = time.monotonic()
        await asyncio.to_thread(parallel, campaign.changed, join, 8)
        await asyncio.sleep(8)  # the joins reach the bot; its debounced checks run
        await campaign.bot.idle(limit=120)
        report.line(f"(3) restart: {len(campaign.changed)} people joined their DM "
                    f"({time.monotonic() - t:.1f} s with the settling)")
        campaign.hwm_campaign_kib = max(campaign.hwm_campaign_kib,
                                        campaign.bot.status().get("VmHWM", 0))
        stopped = campaign.bot.stop()
        report.line(f"    bot B stopped in {stopped:.1f} s (SIGTERM)")

        bot = campaign.bot
        bot.start()
        campaign.restarted = True
        started = bot.started
        try:
            await self._ask_help(campaign.peer, campaign.room_id, campaign.bot_id, within=600)
            answered = time.monotonic() - started
        except TimeoutError:
            answered = float("inf")
        running, logged_in = bot.find(RUNNING_RE), bot.find(LOGGED_IN_RE)
        first_sync = bot.find(FIRST_SYNC_RE)
        rooms = len(campaign.dms)

        def after(found: Found | None) -> str:
            return f"{found.at - bot.started_wall:.1f} s" if found else "(not seen)"

        report.line(f"    restart with {rooms} DMs: the asker's !help (sent at process start) "
                    f"answered after {answered:.1f} s; the bot logged 'Logged in' (crypto store "
                    f"loaded) after {after(logged_in)}, 'running' (first sync done) after "
                    f"{after(running)}")
        report.row(f"restart to first !help ({rooms} DMs)", f"{answered:.1f} s",
                   f"<= {TARGET_RESTART:.0f} s", f"{answered / TARGET_RESTART:.2f}",
                   verdict(answered <= TARGET_RESTART))
        if first_sync is not None:
            m = first_sync.match
            kind = m.group(1) or "full state"  # versions before the room index: always full
            report.line(f"    first sync (bot's log, {kind}): {m.group(2)} joined rooms, "
                        f"{m.group(3)} invites, {m.group(4)} s")
            report.row("first sync (bot's log)", f"{kind}: {m.group(2)} rooms, {m.group(4)} s")
        else:
            report.line("    first sync (bot's log): not logged by this version")
            report.row("first sync (bot's log)", "not logged")

    # -- phase 4 --------------------------------------------------------------------------

    async def phase_steady(self, campaign: Campaign) -> None:
        report, db, bot = self.report, campaign.db, campaign.bot
        await bot.idle(limit=120)
        people = campaign.changed
        builder = AccountBuilder(self.synapse)
        start_ms = int(time.time() * 1000)

        def change(person: Person) -> tuple[str, int, str]:
            account = BuiltAccount(person.user_id, person.user_id[1:].split(":")[0],
                                   person.password)
            device = builder.add_device(account, display_name="scale new device")
            return person.user_id, int(time.time() * 1000), device.access_token

        changes = await asyncio.to_thread(parallel, people, change, 8)
        uploaded = {u: at for u, at, _ in changes}
        campaign.added_tokens = [token for _, _, token in changes]
        spent = (max(uploaded.values()) - start_ms) / 1000.0
        report.line(f"(4) steady state: {len(people)} people each logged in a new unsigned "
                    f"device ({spent:.1f} s for all)")
        wanted = set(uploaded)
        alerted: dict[str, int] = {}
        delivered: dict[str, int] = {}
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for user, at in await asyncio.to_thread(
                    db.rows, "SELECT user_id, MIN(at_ms) FROM alerts WHERE at_ms >= ? "
                             "GROUP BY user_id", [start_ms]):
                alerted[str(user)] = int(at)
            for user, at in await asyncio.to_thread(
                    db.rows, "SELECT user_id, MIN(sent_ms) FROM outbox WHERE kind = 'alert' AND "
                             "status = 'sent' AND created_ms >= ? GROUP BY user_id", [start_ms]):
                delivered[str(user)] = int(at)
            if wanted <= set(alerted) and wanted <= set(delivered):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)
        touched = await asyncio.to_thread(
            db.rows, "SELECT COUNT(DISTINCT user_id) FROM known_devices WHERE first_seen_ms >= ?",
            [start_ms])
        others = sorted(set(alerted) - wanted)
        detect = [(alerted[u] - uploaded[u]) / 1000.0 for u in wanted if u in alerted]
        send = [(delivered[u] - uploaded[u]) / 1000.0 for u in wanted if u in delivered]
        if detect:
            report.line(f"    upload → alert recorded: p50 {statistics.median(detect):.1f} s, "
                        f"max {max(detect):.1f} s (one 5 s debounce window from the first "
                        f"change)")
            report.row("new device → alert recorded", f"p50 {statistics.median(detect):.1f} s, "
                       f"max {max(detect):.1f} s")
        if send:
            report.line(f"    upload → alert DM sent: p50 {statistics.median(send):.1f} s, "
                        f"max {max(send):.1f} s")
            report.row("new device → alert DM sent", f"p50 {statistics.median(send):.1f} s, "
                       f"max {max(send):.1f} s")
        ok = len(detect) == len(people) and len(send) == len(people) and not others
        report.line(f"    alerted: {len(detect)} of {len(people)} changed people, {len(others)} "
                    f"others{' (' + ', '.join(others[:5]) + ')' if others else ''}; alert DMs "
                    f"sent: {len(send)}; people whose remembered sessions changed: "
                    f"{touched[0][0] if touched else '?'}")
        report.row("people alerted / DMed / others", f"{len(detect)} / {len(send)} / "
                   f"{len(others)}", f"{len(people)} / {len(people)} / 0", "", verdict(ok))

    # -- phase 5 --------------------------------------------------------------------------

    async def phase_memory(self, campaign: Campaign) -> None:
        report, bot = self.report, campaign.bot
        waited = await bot.idle(quiet=5.0, limit=180)
        status = bot.status()
        settled, peak = mb(status.get("VmRSS", 0)), mb(status.get("VmHWM", 0))
        people = len(self.world.people)
        which = "restarted" if campaign.restarted else "campaign"
        report.line(f"(5) memory: campaign process peak {mb(campaign.hwm_campaign_kib):.0f} MB; "
                    f"{which} process peak {peak:.0f} MB, settled {settled:.0f} MB (idle after "
                    f"{waited:.0f} s) with {people} people known and {len(campaign.dms)} DMs")
        report.row(f"peak RSS: campaign / {which}", f"{mb(campaign.hwm_campaign_kib):.0f} MB / "
                   f"{peak:.0f} MB")
        target = self.args.rss_target
        report.row("settled RSS", f"{settled:.0f} MB", f"<= {target:.0f} MB",
                   f"{settled / target:.2f}", verdict(settled <= target))
        db_size = campaign.db.size()
        report.line(f"    database {db_size / 1e6:.1f} MB (nerbot.db with -wal/-shm); data dir "
                    f"{dir_size(campaign.data_dir) / 1e6:.1f} MB (with nio's crypto store)")
        report.row("database size", f"{db_size / 1e6:.1f} MB",
                   f"data dir {dir_size(campaign.data_dir) / 1e6:.0f} MB")
        if settled > target and bot.pid is not None:
            floor = await asyncio.to_thread(import_floor_rss, bot.env)
            if floor is not None:
                report.line(f"    the imported code alone (a fresh `import nerbot.app`): "
                            f"{floor:.0f} MB; the data above it: {settled - floor:.0f} MB")
                report.row("settled RSS: imports / data", f"{floor:.0f} MB / "
                           f"{settled - floor:.0f} MB")
            report.line("    largest mappings: " + "; ".join(smaps_top(bot.pid)))
            trimmed = await asyncio.to_thread(trimmed_rss, bot.pid)
            if trimmed is not None:  # last: it changes the process it measures
                report.line(f"    what-if malloc_trim(0) (gdb, in the idle bot): settled "
                            f"{settled:.0f} MB -> {trimmed:.0f} MB")
            if not self.args.no_tracemalloc:
                try:
                    await self._tracemalloc(campaign)
                except (TimeoutError, RuntimeError, OSError, ValueError) as exc:
                    report.line(f"    tracemalloc restart failed: {exc}")

    async def _tracemalloc(self, campaign: Campaign) -> None:
        """Restart the bot under tracemalloc, let it settle, dump Python allocations."""
        report = self.report
        campaign.bot.stop()
        out = self.run_dir / "tracemalloc.txt"
        out.unlink(missing_ok=True)
        traced = BotProcess("campaign-tracemalloc", campaign.bot.config,
                            self.run_dir / "campaign-tracemalloc.log", campaign.bot.env,
                            prefix=["-c", TRACEMALLOC_BOOT, str(out)])
        self.bots.append(traced)
        traced.start()
        try:
            # Several times slower than a plain start: ~6 min with 6,000 DMs on 2 cores.
            await traced.wait_for(RUNNING_RE, 2400, what="start under tracemalloc")
            await asyncio.sleep(10)
            await traced.idle(quiet=5.0, limit=300)
            rss = mb(traced.status().get("VmRSS", 0))
            traced.signal(signal.SIGUSR1)
            for _ in range(300):
                if out.exists() and out.stat().st_size > 0:
                    break
                await asyncio.sleep(1)
            await asyncio.sleep(2)
            lines = out.read_text().splitlines() if out.exists() else []
        finally:
            traced.stop()
        if not lines:
            report.line("    tracemalloc: no dump")
            return
        total = int(lines[0].split()[1])
        packages = [ln.split(" ", 2) for ln in lines if ln.startswith("package ")]
        report.line(f"    under tracemalloc (RSS {rss:.0f} MB with its overhead): Python "
                    f"allocations {total / 2**20:.0f} MB, by package: "
                    + ", ".join(f"{p[2]} {int(p[1]) / 2**20:.1f}" for p in packages[:10]))
        for ln in lines:
            if ln.startswith("line "):
                _, size, where = ln.split(" ", 2)
                report.line(f"      {int(size) / 2**20:6.1f} MB  {where}")

    # -- the end --------------------------------------------------------------------------

    async def finish(self, campaign: Campaign | None) -> None:
        """Measure the first sync from outside, then put the world back as it was."""
        if campaign is None:
            return
        campaign.bot.stop()
        campaign.db.close()
        try:
            size, rooms, seconds = await asyncio.to_thread(
                first_sync_from_outside, self.synapse, self.world.admin_token, campaign.bot_id)
            self.report.line(f"    full-state sync of the bot's account, its filter (from "
                             f"outside, bot stopped): {size / 1e6:.1f} MB, {rooms} joined rooms, "
                             f"{seconds:.1f} s")
            self.report.row("first sync (full state, outside)",
                            f"{size / 1e6:.1f} MB, {rooms} rooms, {seconds:.1f} s")
        except (SynapseError, OSError, ValueError) as exc:
            self.report.line(f"    full-state sync from outside failed: {exc}")
        await self.cleanup(campaign)

    async def cleanup(self, campaign: Campaign) -> None:
        self.campaign = None

        def logout(token: str) -> None:
            with contextlib.suppress(SynapseError, OSError):
                self.synapse.logout(token)

        await asyncio.to_thread(parallel, campaign.added_tokens, logout, 8)
        campaign.added_tokens = []
        for peer in self.peers:
            with contextlib.suppress(Exception):
                await peer.close(logout=True)
        self.peers = []
        seconds = await asyncio.to_thread(retire_bots, self.synapse, self.world)
        self.report.line(f"cleanup: added devices logged out, bot B deactivated (Synapse parted "
                         f"it from its rooms in {duration(seconds)})")


def parse_phases(text: str) -> set[int]:
    """``1,2``; ``0`` alone builds (or checks) the world and stops."""
    try:
        phases = {int(p) for p in text.replace(" ", "").split(",") if p}
    except ValueError:
        raise argparse.ArgumentTypeError(f"phases are 0 or some of {ALL_PHASES}") from None
    if not phases <= {0, *ALL_PHASES}:
        raise argparse.ArgumentTypeError(f"phases are 0 or some of {ALL_PHASES}")
    phases.discard(0)
    if phases & {3, 4, 5}:
        phases.add(2)  # they measure the bot the campaign left behind
    return phases


async def run(args: argparse.Namespace, workdir: Path) -> list[str]:
    report = Report()
    started = time.monotonic()
    if args.rebuild:
        wipe_world(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    synapse = LocalSynapse(workdir / "synapse")
    bench: Bench | None = None
    try:
        await asyncio.to_thread(synapse.install)
        await asyncio.to_thread(synapse.start)
        logger.info("Synapse at %s (PID %s)", synapse.url, synapse.pid)
        t = time.monotonic()
        world = await asyncio.to_thread(build_world, synapse, workdir, args.people, args.seed,
                                        args.workers, report)
        report.line(f"world: {world.summary()} (built in {duration(world.build['seconds'])} "
                    f"in all; ready {duration(time.monotonic() - t)} after Synapse started)")
        retired = await asyncio.to_thread(retire_bots, synapse, world)
        if retired > 1:
            report.line(f"bots left active by an earlier run deactivated in {duration(retired)}")
        if not args.phases:
            return report.render()
        bench = Bench(args, workdir, synapse, world, report)
        report.line(f"run directory {bench.run_dir}; ceiling {args.ceiling}/min; phases "
                    f"{','.join(str(p) for p in sorted(args.phases))}")
        try:
            await run_phases(bench, args, report)
        except Exception as exc:  # what was measured so far is still printed
            logger.exception("The run stopped")
            report.line(f"the run stopped: {type(exc).__name__}: {exc}")
    finally:
        if bench is not None:
            bench.stop_all()
            if bench.campaign is not None:  # stopped before its cleanup
                with contextlib.suppress(Exception):
                    await bench.cleanup(bench.campaign)
            for peer in bench.peers:  # the asker's device goes: the world stays as it was
                with contextlib.suppress(Exception):
                    await peer.close(logout=True)
        synapse.stop()
    report.line(f"total {duration(time.monotonic() - started)}")
    return report.render()


async def run_phases(bench: Bench, args: argparse.Namespace, report: Report) -> None:
    phase_started = time.monotonic()
    if 1 in args.phases:
        await bench.phase_scan()
        report.line(f"    phase 1 took {duration(time.monotonic() - phase_started)}")
    if 2 in args.phases:
        phase_started = time.monotonic()
        campaign = await bench.phase_campaign()
        report.line(f"    phase 2 took {duration(time.monotonic() - phase_started)}")
        for phase, step in ((3, bench.phase_restart), (4, bench.phase_steady),
                            (5, bench.phase_memory)):
            if phase in args.phases:
                phase_started = time.monotonic()
                await step(campaign)
                report.line(f"    phase {phase} took "
                            f"{duration(time.monotonic() - phase_started)}")
        phase_started = time.monotonic()
        await bench.finish(campaign)
        report.line(f"    the outside sync and the cleanup took "
                    f"{duration(time.monotonic() - phase_started)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--people", type=int, default=DEFAULT_PEOPLE)
    parser.add_argument("--ceiling", type=int, default=DEFAULT_CEILING, metavar="PER_MINUTE",
                        help=f"the bot's reminders.max_sends_per_minute (default "
                             f"{DEFAULT_CEILING})")
    parser.add_argument("--phases", type=parse_phases, default=set(ALL_PHASES),
                        help="which phases, e.g. 1 or 2,3 (3-5 need 2; default all; 0: only "
                             "build or check the world)")
    parser.add_argument("--workdir", type=Path, default=Path(".nerbot-scale"),
                        help="the homeserver, world.json and each run's bots (default "
                             ".nerbot-scale/)")
    parser.add_argument("--rebuild", action="store_true", help="build the world again")
    parser.add_argument("--seed", type=int, default=0, help="the mix of a new world")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help=f"threads building the world (default {DEFAULT_WORKERS})")
    parser.add_argument("--verify", type=int, default=DEFAULT_VERIFY, metavar="N",
                        help=f"DM rooms read back from the server (default {DEFAULT_VERIFY}; "
                             "0 = all)")
    parser.add_argument("--rss-target", type=float, default=TARGET_RSS_MB, metavar="MB",
                        help=f"settled RSS target (default {TARGET_RSS_MB:.0f} MB)")
    parser.add_argument("--no-tracemalloc", action="store_true",
                        help="no tracemalloc restart when the settled RSS is above the target")
    args = parser.parse_args()
    configure_logging("INFO")
    lines = asyncio.run(run(args, args.workdir.resolve()))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
