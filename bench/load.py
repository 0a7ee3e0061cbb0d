"""Load: N real E2EE people send ``!backup-status`` to the bot at the same moment.

A throw-away Synapse on 127.0.0.1, the real bot (default settings, no admin token; in-process)
and N people, each a real E2EE client (``nerbot.localdev.peer.E2EEPeer``: matrix-nio with its
own device and crypto store, registered through the admin API, logged in, syncing) with an
encrypted DM with the bot whose welcome they have read, and who has sent it one unmeasured
``!help`` (so their Megolm session is shared, as for anyone who talked to the bot before).
Then every person sends ``!backup-status`` at once, and each one's round trip is measured:
from just before their client encrypts and sends the command to the moment the bot's report
(it names the person's own device) is decrypted on their side.

The bot runs on the same event loop as the people, not on its own thread as in ``verify.py``:
nio's SQLite store binds peewee's (process-global) model classes to a client's database for
each call, so nio clients in two threads of one process write into each other's stores (seen
as ``FOREIGN KEY constraint failed`` in the bot's sync loop). The CPU printed is therefore the
whole process's (the bot and the N clients) over the burst.

Prints answered/total (within ``--timeout``) and p50/p95/max of the round trips, next to one
person's round trip alone (``--alone`` times, median). Not a timed test: nothing is asserted.
Synapse is stopped by the PID it was started with, also on errors or Ctrl-C.

    uv run python bench/load.py [--users 50] [--timeout 120] [--alone 5]
        [--setup-concurrency 8] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.scan import run_and_print
from nerbot.app import NerbotApp
from nerbot.config import parse_config
from nerbot.localdev.peer import E2EEPeer
from nerbot.localdev.synapse import LocalSynapse

logger = logging.getLogger("bench.load")
T = TypeVar("T")
COMMAND = "!backup-status"


@dataclass
class Person:
    peer: E2EEPeer
    room_id: str = ""
    seconds: float | None = None  # round trip of the measured command; None: no answer
    error: str = ""


def ms(seconds: float) -> float:
    return seconds * 1000.0


def p95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[94]


async def bounded(limit: int, items: list[T], work: Callable[[T], Awaitable[object]]) -> None:
    """``work`` on every item, at most ``limit`` at a time (Synapse on 2 cores: room creation
    and logins are the slow part of the setup)."""
    gate = asyncio.Semaphore(limit)

    async def one(item: T) -> None:
        async with gate:
            await work(item)

    await asyncio.gather(*(one(item) for item in items))


async def quiet(window: float = 0.3, idle_cpu: float = 0.005, limit: float = 30.0) -> float:
    """Wait until this process (the bot and every client) has used almost no CPU for
    ``window`` s; its CPU time then. Everything here is one event loop, so quiet means that
    nothing is left over from what came before (a sync, a key query, a welcome)."""
    deadline = time.monotonic() + limit
    before = time.process_time()
    while True:
        await asyncio.sleep(window)
        now = time.process_time()
        if now - before < idle_cpu or time.monotonic() > deadline:
            return now
        before = now


def process_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system) of another process, from ``/proc`` (None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


async def join_person(synapse: LocalSynapse, workdir: Path, n: int) -> Person:
    password = secrets.token_urlsafe(12)
    localpart = f"load-{n:03d}-{uuid.uuid4().hex[:6]}"
    user_id = await asyncio.to_thread(synapse.register_user, localpart, password)
    peer = await E2EEPeer.login(synapse.url, user_id, password, workdir / "people" / localpart,
                                device_name=f"load {n}")
    peer.start()
    await peer.wait_synced(timeout=120)
    return Person(peer)


async def open_dm(person: Person, bot_id: str) -> None:
    peer = person.peer
    person.room_id = await peer.create_encrypted_dm(bot_id)
    await peer.wait_for_join(person.room_id, bot_id, timeout=120)
    await peer.wait_for_message(person.room_id, sender=bot_id, timeout=120)  # the welcome


async def round_trip(person: Person, bot_id: str, body: str, expect: str, within: float
                     ) -> float:
    """Send ``body``; seconds until the bot's answer containing ``expect`` is readable."""
    peer = person.peer
    started = time.perf_counter()
    await peer.send_text(person.room_id, body, timeout=within)
    await peer.wait_for_message(person.room_id, sender=bot_id, timeout=within,
                                predicate=lambda m: expect in m.body)
    return time.perf_counter() - started


async def ask(person: Person, bot_id: str, start: asyncio.Event, within: float) -> None:
    """Send the command the moment ``start`` is set; time until the report (it names the
    person's device) is readable."""
    await start.wait()
    try:
        person.seconds = await round_trip(person, bot_id, COMMAND, person.peer.device_id,
                                          within)
    except Exception as exc:  # a missing answer is a result, not a crash of the benchmark
        person.error = f"{type(exc).__name__}: {str(exc)[:200]}"
        logger.warning("%s: %s", person.peer.user_id, person.error)


async def run(args: argparse.Namespace, workdir: Path) -> list[str]:
    out: list[str] = []
    synapse = LocalSynapse(workdir / "synapse")
    app: NerbotApp | None = None
    people: list[Person] = []
    try:
        began = time.monotonic()
        await asyncio.to_thread(synapse.start)
        logger.info("Synapse at %s (PID %s)", synapse.url, synapse.pid)
        password = secrets.token_urlsafe(12)
        bot_id = await asyncio.to_thread(synapse.register_user, "nerbot", password)
        config = parse_config(  # default settings, as bench/commands.py
            {"matrix": {"homeserver": synapse.url, "user_id": bot_id},
             "storage": {"data_dir": str(workdir / "bot")}},
            {"NERBOT_PASSWORD": password}, workdir)
        app = NerbotApp(config)
        await app.start()
        assert app.session is not None
        started_bot = time.monotonic()

        gate = asyncio.Semaphore(args.setup_concurrency)

        async def make(n: int) -> Person:
            async with gate:
                return await join_person(synapse, workdir, n)

        people = list(await asyncio.gather(*(make(n) for n in range(args.users))))
        logged_in = time.monotonic()
        logger.info("%d people logged in and syncing (%.1f s)", len(people),
                    logged_in - started_bot)
        await bounded(args.setup_concurrency, people, lambda p: open_dm(p, bot_id))
        dms_open = time.monotonic()
        logger.info("%d DMs open, welcomes read (%.1f s)", len(people), dms_open - logged_in)
        # Warm-up, not measured: each person's first message shares their Megolm session with
        # the bot's device (keys claimed, Olm), which a regular's message does not.
        await bounded(args.setup_concurrency, people, lambda p: round_trip(
            p, bot_id, "!help", COMMAND, args.timeout))
        alone = [await round_trip(people[0], bot_id, COMMAND, people[0].peer.device_id,
                                  args.timeout) for _ in range(args.alone)]
        warmed = time.monotonic()

        cpu_before = await quiet()  # joins, welcomes, key queries done: the burst starts idle
        synapse_before = process_cpu(synapse.pid)
        start = asyncio.Event()
        tasks = [asyncio.create_task(ask(p, bot_id, start, args.timeout)) for p in people]
        await asyncio.sleep(0)  # every task is waiting on the event
        burst = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        burst_seconds = time.perf_counter() - burst
        cpu = await quiet() - cpu_before
        synapse_after = process_cpu(synapse.pid)

        rtts = sorted(p.seconds for p in people if p.seconds is not None)
        out.append(f"setup: Synapse + bot {started_bot - began:.1f} s, {args.users} people "
                   f"registered, logged in and syncing {logged_in - started_bot:.1f} s, "
                   f"DMs opened and welcomes read {dms_open - logged_in:.1f} s, everyone's "
                   f"warm-up !help and {args.alone} alone {warmed - dms_open:.1f} s "
                   f"(at most {args.setup_concurrency} at a time)")
        if alone:
            out.append(f"one person alone, {args.alone} times: {COMMAND} round trip median "
                       f"{ms(statistics.median(alone)):.0f} ms")
        out.append(f"{args.users} people sent {COMMAND} at once; answered {len(rtts)}/"
                   f"{args.users} within {args.timeout:.0f} s; all answers in "
                   f"{burst_seconds:.1f} s")
        if rtts:
            out.append(f"round trip: p50 {ms(statistics.median(rtts)):.0f} ms, "
                       f"p95 {ms(p95(rtts)):.0f} ms, max {ms(rtts[-1]):.0f} ms "
                       f"(min {ms(rtts[0]):.0f} ms, mean {ms(statistics.fmean(rtts)):.0f} ms)")
        out.append(f"CPU over the burst, idle to idle: this process (the bot and the "
                   f"{args.users} clients) {cpu:.2f} s, Synapse " + (
                       f"{synapse_after - synapse_before:.2f} s"
                       if synapse_before is not None and synapse_after is not None
                       else "(not measured: no /proc)"))
        for person in people:
            if person.seconds is None:
                out.append(f"  no answer: {person.peer.user_id}: {person.error}")
    finally:
        for person in people:
            await person.peer.close()
        if app is not None:
            await app.stop()
        await asyncio.to_thread(synapse.stop)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=50, help="people sending at once")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds each person waits for the answer")
    parser.add_argument("--alone", type=int, default=5,
                        help="round trips of one person alone first (the no-load baseline)")
    parser.add_argument("--setup-concurrency", type=int, default=8,
                        help="logins and DM openings in flight during the setup")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where Synapse, the bot and the people keep data "
                             "(default: a temp dir)")
    args = parser.parse_args()
    if args.users < 1 or args.timeout <= 0 or args.setup_concurrency < 1 or args.alone < 0:
        parser.error("--users >= 1, --timeout > 0, --setup-concurrency >= 1, --alone >= 0")
    return run_and_print(run, args)


if __name__ == "__main__":
    sys.exit(main())
