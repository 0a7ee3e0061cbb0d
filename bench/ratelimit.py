"""Rate limits: N people send ``!backup-status`` at once, on a Synapse as installed.

Three worlds side by side, each on its own throw-away Synapse on 127.0.0.1 with the real bot
(in-process, with a server admin's token) and N real E2EE people (as in ``bench/load.py``:
registered, logged in, syncing, an encrypted DM with the bot whose welcome they read, one
unmeasured ``!help`` each):

- ``unlimited``: the tests' Synapse, every ``rc_*`` limit raised out of the way (the floor);
- ``exempt``: Synapse's default rate limits (``LocalSynapse(default_rate_limits=True)``), the
  bot with ``exempt_bot_from_ratelimit = true``: it sets its override to 0/0 at start;
- ``limited``: the same defaults, ``exempt_bot_from_ratelimit = false``: the bot is throttled
  like one person (``rc_message``: a burst of 10, then a message every 5 s).

Then, world after world and ``--bursts`` rounds of that (interleaved, so a machine that slows
down for a while slows every world alike), all N people of a world send ``!backup-status`` at
the same moment; each round trip runs from just before the person's client encrypts and sends
to the moment the bot's report (it names the person's device) is decrypted on their side.
Prints answered/asked, p50 and slowest of the pooled round trips per world, and the ratios to
``unlimited`` with PASS/MISS against the target (exempt within 2x of unlimited). Nothing is
asserted. Everything runs on one event loop (see ``bench/load.py`` for why). Every Synapse is
stopped by the PID it was started with.

    uv run python bench/ratelimit.py [--users 8] [--bursts 3] [--timeout 180]
        [--worlds unlimited,exempt,limited] [--setup-concurrency 8] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import COMMAND, Person, bounded, join_person, ms, open_dm, quiet, round_trip
from bench.load import ask as ask_at_once
from bench.scan import run_and_print
from nerbot.app import NerbotApp
from nerbot.config import parse_config
from nerbot.localdev.synapse import LocalSynapse

logger = logging.getLogger("bench.ratelimit")
WORLDS = ("unlimited", "exempt", "limited")
TARGET = 2.0  # exempt / unlimited, p50 and max


@dataclass
class World:
    name: str
    users: int
    bot_id: str = ""
    people: list[Person] = field(default_factory=list)
    rtts: list[float] = field(default_factory=list)
    asked: int = 0
    setup_seconds: float = 0.0
    rate_limited: bool | None = None
    override: object = None

    @property
    def p50(self) -> float:
        return statistics.median(self.rtts)

    @property
    def slowest(self) -> float:
        return max(self.rtts)


async def set_up(world: World, args: argparse.Namespace, workdir: Path,
                 stack: contextlib.AsyncExitStack) -> None:
    """Synapse, the bot and the people of one world; ``stack`` takes them down at the end."""
    name = world.name
    synapse = LocalSynapse(workdir / name / "synapse", default_rate_limits=name != "unlimited")
    stack.push_async_callback(asyncio.to_thread, synapse.stop)
    began = time.monotonic()
    await asyncio.to_thread(synapse.start)
    password, admin_password = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    bot_id = world.bot_id = await asyncio.to_thread(synapse.register_user, "nerbot", password)
    await asyncio.to_thread(synapse.register_user, "admin", admin_password, True)
    token = await asyncio.to_thread(synapse.admin_access_token, "admin", admin_password)
    config = parse_config(
        {"matrix": {"homeserver": synapse.url, "user_id": bot_id},
         "storage": {"data_dir": str(workdir / name / "bot")},
         "synapse_admin": {"exempt_bot_from_ratelimit": name != "limited"}},
        {"NERBOT_PASSWORD": password, "NERBOT_ADMIN_TOKEN": token}, workdir)
    app = NerbotApp(config)
    stack.push_async_callback(app.stop)
    await app.start()
    world.rate_limited = app.rate_limited
    world.override = await asyncio.to_thread(
        synapse.request, "GET",
        synapse.api_path("/_synapse/admin/v1/users/{}/override_ratelimit", bot_id), None, token)

    gate = asyncio.Semaphore(args.setup_concurrency)

    async def make(n: int) -> Person:
        async with gate:
            person = await join_person(synapse, workdir / name, n)
        stack.push_async_callback(person.peer.close)
        return person

    world.people = list(await asyncio.gather(*(make(n) for n in range(args.users))))
    await bounded(args.setup_concurrency, world.people, lambda p: open_dm(p, bot_id))
    await bounded(args.setup_concurrency, world.people, lambda p: round_trip(
        p, bot_id, "!help", COMMAND, args.timeout))
    world.setup_seconds = time.monotonic() - began
    logger.info("%s: %d people ready (%.1f s)", name, len(world.people), world.setup_seconds)


async def burst(world: World, within: float) -> None:
    """Everyone of ``world`` sends the command at the same moment; round trips recorded."""
    await quiet()
    for person in world.people:
        person.seconds = None
    start = asyncio.Event()
    tasks = [asyncio.create_task(ask_at_once(p, world.bot_id, start, within))
             for p in world.people]
    await asyncio.sleep(0)  # every task is waiting on the event
    start.set()
    await asyncio.gather(*tasks)
    world.asked += len(world.people)
    world.rtts += [p.seconds for p in world.people if p.seconds is not None]
    logger.info("%s: burst answered %d/%d", world.name,
                sum(p.seconds is not None for p in world.people), len(world.people))


def ratio_line(world: World, floor: World, target: float | None) -> str:
    p50, slowest = world.p50 / floor.p50, world.slowest / floor.slowest
    verdict = ""
    if target is not None:
        verdict = "  PASS" if p50 <= target and slowest <= target else "  MISS"
        verdict += f" (target <= {target:g})"
    return f"  {world.name} / {floor.name}: p50 {p50:.2f}, slowest {slowest:.2f}{verdict}"


async def run(args: argparse.Namespace, workdir: Path) -> list[str]:
    worlds = {name: World(name, args.users) for name in args.worlds}
    async with contextlib.AsyncExitStack() as stack:
        for world in worlds.values():
            await set_up(world, args, workdir, stack)
        for _ in range(args.bursts):  # interleaved: a drifting machine slows all alike
            for world in worlds.values():
                await burst(world, args.timeout)
    out = [f"{args.users} people send {COMMAND} at once, {args.bursts} times per world, "
           f"interleaved (timeout {args.timeout:.0f} s each):"]
    for world in worlds.values():
        line = (f"  {world.name:9} answered {len(world.rtts)}/{world.asked}; bot "
                f"rate_limited={world.rate_limited}, override {world.override}; setup "
                f"{world.setup_seconds:.1f} s")
        if world.rtts:
            line += f"; p50 {ms(world.p50):.0f} ms, slowest {ms(world.slowest):.0f} ms"
        out.append(line)
    floor = worlds.get("unlimited")
    if floor is not None and floor.rtts:
        for name, target in (("exempt", TARGET), ("limited", None)):
            other = worlds.get(name)
            if other is not None and other.rtts:
                out.append(ratio_line(other, floor, target))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=8, help="people sending at once")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds each person waits for an answer")
    parser.add_argument("--bursts", type=int, default=3,
                        help="bursts per world, the worlds taking turns")
    parser.add_argument("--worlds", default=",".join(WORLDS),
                        help=f"which of {', '.join(WORLDS)} to run, comma-separated")
    parser.add_argument("--setup-concurrency", type=int, default=8,
                        help="logins and DM openings in flight during the setup")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the servers, bots and people keep data (default: a temp dir)")
    args = parser.parse_args()
    args.worlds = [w.strip() for w in args.worlds.split(",") if w.strip()]
    if not args.worlds or any(w not in WORLDS for w in args.worlds):
        parser.error(f"--worlds: a comma-separated choice of {', '.join(WORLDS)}")
    if args.users < 1 or args.timeout <= 0 or args.setup_concurrency < 1 or args.bursts < 1:
        parser.error("--users >= 1, --timeout > 0, --setup-concurrency >= 1, --bursts >= 1")
    return run_and_print(run, args)


if __name__ == "__main__":
    sys.exit(main())
