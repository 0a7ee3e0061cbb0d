"""Benchmark: emoji verification, bot vs Element's crypto, against the js<->js floor.

For each transport (to-device, in-room) it runs complete verifications (request → emoji →
"They match" → done on both sides), sequentially and 10 in parallel, between the real bot and
matrix-js-sdk peers (Rust crypto), and the same verification between two js-sdk peers (the
floor: what Element's crypto costs on both sides). It prints the median wall time per
verification, the ratio bot/floor (target <= 1.5) and the bot's CPU time per verification
(printed, no target: a verification is paced by a person comparing emoji), measured as the CPU
time of the bot's own thread: the bot runs on its own event loop, so driving the peers is not
counted. One unmeasured verification per transport comes first (one-time costs: schemas
compiled on first use, group sessions shared).
Everything runs on 127.0.0.1 and is stopped at the end.

    uv run python bench/verify.py [--parallel 10] [--repeats 5] [--profile]
        [--transports to_device in_room] [--modes both|sequential|parallel]

``--profile`` prints a cProfile of the bot's thread while it verifies to stderr;
``--profile-out FILE`` also saves it for ``pstats`` (callers, callees).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import logging
import pstats
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.cpusampler import CpuSampler
from nerbot.app import NerbotApp
from nerbot.config import parse_config
from nerbot.localdev.jspeer import PEER_DIR, JsPeer, ensure_installed
from nerbot.localdev.synapse import LocalSynapse

logger = logging.getLogger("bench.verify")
T = TypeVar("T")


@dataclass
class Person:
    user_id: str
    peer: JsPeer
    room_id: str = ""

    @property
    def device_id(self) -> str:
        assert self.peer.device_id is not None
        return self.peer.device_id


async def person(synapse: LocalSynapse, prefix: str) -> Person:
    localpart = f"{prefix}-{uuid.uuid4().hex[:8]}"
    password = secrets.token_urlsafe(12)
    user_id = await asyncio.to_thread(synapse.register_user, localpart, password)
    peer = await JsPeer.start(name=localpart)
    await peer.login(synapse.url, user_id, password, device_name=prefix)
    await peer.call("bootstrap_cross_signing", password=password)
    return Person(user_id, peer)


async def with_bot(p: Person, bot_id: str, bot_device: str, transport: str) -> float:
    started = time.perf_counter()
    if transport == "to_device":
        await p.peer.call("request_device", user_id=bot_id, device_id=bot_device,
                          start_sas=True)
    else:
        await p.peer.call("request_dm", user_id=bot_id, room_id=p.room_id, start_sas=True)
    await p.peer.next_event("sas", timeout=60)
    await p.peer.call("confirm", match=True)
    await p.peer.next_event("done", timeout=60)
    return time.perf_counter() - started


async def floor(a: Person, b: Person, transport: str) -> float:
    started = time.perf_counter()
    if transport == "to_device":
        sent = await a.peer.call("request_device", user_id=b.user_id, device_id=b.device_id,
                                 start_sas=True)
    else:
        sent = await a.peer.call("request_dm", user_id=b.user_id, room_id=a.room_id,
                                 start_sas=True)
    txn = sent["txn"]
    await b.peer.call("accept_next", timeout=60)
    await asyncio.gather(a.peer.next_event("sas", timeout=60, txn=txn),
                         b.peer.next_event("sas", timeout=60, txn=txn))
    await asyncio.gather(a.peer.call("confirm", match=True), b.peer.call("confirm", match=True))
    await asyncio.gather(a.peer.next_event("done", timeout=60, txn=txn),
                         b.peer.next_event("done", timeout=60, txn=txn))
    return time.perf_counter() - started


class BotThread:
    """The bot on its own event loop in its own thread, so its CPU time is measured alone
    (``time.thread_time`` in that thread), apart from this script driving the js peers."""

    def __init__(self, app: NerbotApp, profiler: cProfile.Profile | None = None,
                 sample: bool = False) -> None:
        self.app = app
        self.profiler = profiler
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bot", daemon=True)
        self.thread.start()
        self.sampler = CpuSampler(self.thread) if sample else None

    async def call(self, coro: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(wrapped(), self.loop))

    async def cpu(self) -> float:
        async def thread_time() -> float:
            return time.thread_time()
        return await self.call(thread_time())

    async def quiet(self, window: float = 0.3, idle_cpu: float = 0.0005,
                    limit: float = 15.0) -> float:
        """Wait until the bot's thread has been (nearly) idle for ``window`` s; its CPU then.

        A verification's work does not end when the person's client says "done": the bot
        still records it, notifies listeners, reads the sync with its own last events. A
        measurement that starts and ends on a quiet bot counts all of that, and none of what
        the previous row left running (ten parallel verifications leave a lot).
        """
        deadline = time.monotonic() + limit
        before = await self.cpu()
        while True:
            await asyncio.sleep(window)
            now = await self.cpu()
            if now - before < idle_cpu or time.monotonic() > deadline:
                return now
            before = now

    async def profiling(self, on: bool) -> None:
        """cProfile watches one thread: switch it from inside the bot's."""
        if self.sampler is not None:
            (self.sampler.start if on else self.sampler.stop)()

        async def switch() -> None:
            if self.profiler is not None:
                (self.profiler.enable if on else self.profiler.disable)()
        await self.call(switch())

    async def stop(self) -> None:
        await self.call(self.app.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


async def measure(runs: list[Callable[[], Awaitable[float]]], parallel: bool,
                  bot: BotThread | None = None) -> tuple[list[float], float]:
    cpu = await bot.quiet() if bot is not None else 0.0
    if bot is not None:
        await bot.profiling(True)
    if parallel:
        walls = list(await asyncio.gather(*(run() for run in runs)))
    else:
        walls = [await run() for run in runs]
    if bot is None:
        return walls, 0.0
    used = await bot.quiet() - cpu
    await bot.profiling(False)
    return walls, used


async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    ensure_installed(PEER_DIR)
    workdir = Path(tempfile.mkdtemp(prefix="nerbot-bench-verify-"))
    synapse = LocalSynapse(workdir / "synapse")
    people: list[Person] = []
    partners: list[Person] = []
    bot: BotThread | None = None
    out = sys.stdout
    try:
        await asyncio.to_thread(synapse.start)
        password = secrets.token_urlsafe(12)
        bot_id = await asyncio.to_thread(synapse.register_user, "nerbot", password)
        config = parse_config(
            {"matrix": {"homeserver": synapse.url, "user_id": bot_id},
             "storage": {"data_dir": str(workdir / "bot")},
             "verification": {"max_per_hour": 100, "max_cancels_per_hour": 100}},
            {"NERBOT_PASSWORD": password}, workdir)
        app = NerbotApp(config)
        # CPU time, not wall time: waiting on the homeserver is not what we are after
        profiler = cProfile.Profile(time.thread_time) if args.profile or args.profile_out else None
        bot = BotThread(app, profiler, sample=args.sample)
        await bot.call(app.start())
        assert app.session is not None
        bot_device = app.session.device_id
        n = args.parallel
        people = list(await asyncio.gather(*(person(synapse, f"p{i}") for i in range(n))))
        partners = list(await asyncio.gather(*(person(synapse, f"q{i}") for i in range(n))))
        for p in people:  # each person: a DM with the bot
            p.room_id = (await p.peer.call("create_dm", user_id=bot_id))["room_id"]
            await p.peer.call("wait_member", room_id=p.room_id, user_id=bot_id, timeout=30)
            await p.peer.call("track", user_id=bot_id, device_id=bot_device, timeout=30)
        for p, q in zip(people, partners, strict=True):  # and one with their floor partner
            room = (await p.peer.call("create_dm", user_id=q.user_id))["room_id"]
            await q.peer.call("join", room_id=room)
            await p.peer.call("wait_member", room_id=room, user_id=q.user_id, timeout=30)
            await asyncio.gather(p.peer.call("track", user_id=q.user_id, device_id=q.device_id),
                                 q.peer.call("track", user_id=p.user_id, device_id=p.device_id))
            q.room_id = room  # the floor pair's DM, used for in-room floor runs
        out.write(f"setup done: {n} people + {n} floor partners, bot device {bot_device}\n")
        out.flush()

        # One unmeasured verification per transport first: a long-running bot has long paid
        # its one-time costs (nio's schemas compiled on first use, Megolm sessions shared).
        for transport in args.transports:
            await with_bot(people[0], bot_id, bot_device, transport)
        rows = []
        for transport in args.transports:
            for parallel in {"both": (False, True), "sequential": (False,),
                             "parallel": (True,)}[args.modes]:
                def bot_run(p: Person, t: str = transport) -> Callable[[], Awaitable[float]]:
                    return lambda: with_bot(p, bot_id, bot_device, t)

                def floor_run(p: Person, q: Person, t: str = transport
                              ) -> Callable[[], Awaitable[float]]:
                    async def run() -> float:
                        a = Person(p.user_id, p.peer, q.room_id)
                        return await floor(a, q, t)
                    return run

                if parallel:
                    bot_runs = [bot_run(p) for p in people]
                    floor_runs = [floor_run(p, q) for p, q in zip(people, partners, strict=True)]
                else:
                    bot_runs = [bot_run(people[0]) for _ in range(args.repeats)]
                    floor_runs = [floor_run(people[0], partners[0])
                                  for _ in range(args.repeats)]
                bot_walls, bot_cpu = await measure(bot_runs, parallel, bot)
                floor_walls, _ = await measure(floor_runs, parallel)
                mode = "parallel" if parallel else "sequential"
                rows.append((transport, mode, statistics.median(bot_walls),
                             statistics.median(floor_walls), bot_cpu / len(bot_runs)))
        out.write("\ntransport   mode        bot median  floor median  bot/floor  "
                  "bot CPU/verification\n")
        for transport, mode, bot_med, floor_med, cpu in rows:
            ratio = bot_med / floor_med
            out.write(f"{transport:<11} {mode:<11} {bot_med * 1000:8.0f} ms {floor_med * 1000:9.0f}"
                      f" ms  {ratio:8.2f} {'PASS' if ratio <= 1.5 else 'MISS'}  "
                      f"{cpu * 1000:8.1f} ms\n")
        async def read_records() -> list[dict[str, object]]:
            return app.store.verifications() if app.store else []
        records = await bot.call(read_records())  # SQLite: only from the bot's thread
        verified = sum(1 for r in records if r["result"] == "verified")
        out.write(f"\nbot records: {len(records)} verifications, {verified} verified\n")
        return 0
    finally:
        # every js peer started, the floor partners too: a live node child outlives the run
        await asyncio.gather(*(p.peer.close() for p in people + partners),
                             return_exceptions=True)
        if bot is not None:
            await bot.stop()
            if bot.sampler is not None:
                sys.stderr.write(bot.sampler.report())
            if bot.profiler is not None:  # the bot's thread during the measured runs
                text = io.StringIO()
                stats = pstats.Stats(bot.profiler, stream=text)
                stats.sort_stats("cumulative").print_stats(50)
                stats.sort_stats("tottime").print_stats(35)
                sys.stderr.write(text.getvalue())
                if args.profile_out:
                    stats.dump_stats(args.profile_out)
        await asyncio.to_thread(synapse.stop)
        shutil.rmtree(workdir, ignore_errors=True)  # the bot's keys and Synapse's database


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallel", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--transports", nargs="+", choices=("to_device", "in_room"),
                        default=["to_device", "in_room"])
    parser.add_argument("--modes", choices=("both", "sequential", "parallel"), default="both")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sample", action="store_true",
                        help="CPU-time sampling profile of the bot's thread on stderr")
    parser.add_argument("--profile-out", metavar="FILE")
    raise SystemExit(asyncio.run(main(parser.parse_args())))
