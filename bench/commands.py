"""Benchmark: a command's round trip from Element's crypto, nerbot vs an echo bot on stock nio.

One person on matrix-js-sdk with Rust crypto (the peer the tests use) has an encrypted DM with
the real bot and one with a minimal echo bot on stock matrix-nio (``bench/echobot.py``), on the
same throw-away Synapse. The person sends ``!help`` and ``!backup-status`` to nerbot and a text
to the echo bot, ``--count`` times each, one at a time, in interleaved blocks (so machine drift
hits all three alike). The round trip is timed inside the js peer: from just before the client
encrypts and sends to the moment the bot's reply is decrypted there. Prints p50/p95 of each,
the ratios nerbot/echo bot against the targets (p50 <= 1.1, p95 <= 1.3; PASS/MISS, never
asserted) and each bot's CPU per round. Everything runs on 127.0.0.1 and is stopped at the end.

    uv run python bench/commands.py [--count 200] [--block 10] [--warmup 5] [--gap 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.scan import run_and_print
from bench.verify import BotThread
from nerbot.app import NerbotApp
from nerbot.config import parse_config
from nerbot.localdev.jspeer import PEER_DIR, JsPeer, ensure_installed
from nerbot.localdev.synapse import LocalSynapse

logger = logging.getLogger("bench.commands")

TARGET_P50 = 1.1  # nerbot / echo bot
TARGET_P95 = 1.3
ECHOBOT = Path(__file__).with_name("echobot.py")
ECHOBOT_PASSWORD_ENV = "ECHOBOT_PASSWORD"
ECHOBOT_START_SECONDS = 60.0
# !help lists every command's usage, the welcome notice does not mention !backup-status
HELP_EXPECT = "!backup-status"


def ms(seconds: float) -> float:
    return seconds * 1000.0


def verdict(ratio: float, target: float) -> str:
    return "PASS" if ratio <= target else "MISS"


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[94]


async def settle(cpu: Callable[[], Awaitable[float]], window: float = 0.3,
                 idle_cpu: float = 0.0005, limit: float = 15.0) -> float:
    """Wait until a bot has used (almost) no CPU for ``window`` s; its CPU time then.

    A round's work does not end with the reply: each bot still reads the sync that brings its
    own message back. Starting and ending a block on a quiet bot counts that work in the block
    and none of what the other bot's block left running.
    """
    deadline = time.monotonic() + limit
    before = await cpu()
    while True:
        await asyncio.sleep(window)
        now = await cpu()
        if now - before < idle_cpu or time.monotonic() > deadline:
            return now
        before = now


class EchoProcess:
    """``bench/echobot.py`` in its own process (stock nio, untouched by nerbot's patches)."""

    def __init__(self, process: asyncio.subprocess.Process, device_id: str) -> None:
        self.process = process
        self.device_id = device_id

    @classmethod
    async def start(cls, homeserver: str, user_id: str, password: str, store: Path
                    ) -> EchoProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(ECHOBOT), "--homeserver", homeserver, "--user-id", user_id,
            "--store", str(store), env={**os.environ, ECHOBOT_PASSWORD_ENV: password},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        try:
            ready = await cls._read(process, ECHOBOT_START_SECONDS)
        except BaseException:
            await cls._end(process)
            raise
        logger.info("Echo bot up (PID %d, device %s)", process.pid, ready["device_id"])
        return cls(process, str(ready["device_id"]))

    @staticmethod
    async def _read(process: asyncio.subprocess.Process, within: float) -> dict[str, Any]:
        assert process.stdout is not None
        async with asyncio.timeout(within):
            line = await process.stdout.readline()
        if not line:
            raise RuntimeError(f"echo bot (PID {process.pid}) exited: {await process.wait()}")
        message: dict[str, Any] = json.loads(line)
        return message

    async def cpu(self) -> float:
        """The echo bot's process CPU time (it answers a ``cpu`` line on its stdin)."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"cpu\n")
        await self.process.stdin.drain()
        return float((await self._read(self.process, 10.0))["cpu"])

    async def stop(self) -> None:
        await self._end(self.process)

    @staticmethod
    async def _end(process: asyncio.subprocess.Process) -> None:
        """Close its stdin (it then stops by itself); by its PID, SIGTERM and then SIGKILL
        if it has not exited 10 s later."""
        if process.returncode is not None:
            return
        if process.stdin is not None:
            process.stdin.close()
        for then in ("terminate", "kill", None):
            try:
                async with asyncio.timeout(10):
                    await process.wait()
                return
            except TimeoutError:
                if then is None:
                    raise
                logger.warning("Echo bot (PID %d) still running: %s", process.pid, then)
                (process.terminate if then == "terminate" else process.kill)()


@dataclass
class Kind:
    """One kind of round: what the person sends, to whom, and what the reply must contain."""

    label: str
    bot_id: str
    room_id: str
    body: Callable[[int], str]
    expect: Callable[[int], str]
    cpu: Callable[[], Awaitable[float]]
    rtts: list[float] = field(default_factory=list)  # seconds
    sends: list[float] = field(default_factory=list)  # until the server accepted the message
    cpu_seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)


async def round_trip(peer: JsPeer, kind: Kind, n: int, within: float) -> tuple[float, float]:
    """One message and its reply; (round trip, send) in seconds, as the js peer timed them."""
    reply = await peer.call("send_text", room_id=kind.room_id, body=kind.body(n),
                            reply_from=kind.bot_id, expect=kind.expect(n), timeout=within)
    for body in reply["skipped"]:
        logger.warning("%s: passed over a message from %s: %r", kind.label, kind.bot_id, body)
        kind.skipped.append(str(body))
    return float(reply["rtt_ms"]) / 1000.0, float(reply["sent_ms"]) / 1000.0


async def dm(peer: JsPeer, user_id: str, device_id: str) -> str:
    """An encrypted DM the bot has joined, its device known to the person's crypto."""
    room_id = str((await peer.call("create_dm", user_id=user_id))["room_id"])
    await peer.call("wait_member", room_id=room_id, user_id=user_id, timeout=30)
    await peer.call("track", user_id=user_id, device_id=device_id, timeout=30)
    return room_id


async def measure(args: argparse.Namespace, peer: JsPeer, kinds: list[Kind],
                  meters: list[Callable[[], Awaitable[float]]]) -> float:
    """Warm-up rounds, then ``--count`` rounds of each kind in rotating blocks; seconds."""
    n = 0
    for kind in kinds:  # first messages share Megolm sessions, compile schemas: not measured
        for _ in range(args.warmup):
            n += 1
            await round_trip(peer, kind, n, args.timeout)
            await asyncio.sleep(args.gap)
        kind.skipped.clear()
    started = time.monotonic()
    cycle = 0
    while any(len(kind.rtts) < args.count for kind in kinds):
        shift = cycle % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            rounds = min(args.block, args.count - len(kind.rtts))
            if rounds <= 0:
                continue
            # every bot quiet: nothing left over from the last block runs into this one
            cpus = await asyncio.gather(*(settle(meter) for meter in meters))
            before = cpus[meters.index(kind.cpu)]
            for _ in range(rounds):
                n += 1
                rtt, sent = await round_trip(peer, kind, n, args.timeout)
                kind.rtts.append(rtt)
                kind.sends.append(sent)
                await asyncio.sleep(args.gap)
            kind.cpu_seconds += await settle(kind.cpu) - before
        cycle += 1
        logger.info("Cycle %d: %s", cycle, ", ".join(
            f"{kind.label} {len(kind.rtts)}/{args.count}" for kind in kinds))
    return time.monotonic() - started


def report(args: argparse.Namespace, kinds: list[Kind], out: list[str]) -> None:
    out.append(f"{'round trip':<22} {'p50':>9} {'p95':>9} {'mean':>9} {'max':>9} "
               f"{'send p50':>9}  CPU/round")
    for kind in kinds:
        out.append(f"{kind.label:<22} {ms(statistics.median(kind.rtts)):6.1f} ms "
                   f"{ms(p95(kind.rtts)):6.1f} ms {ms(statistics.fmean(kind.rtts)):6.1f} ms "
                   f"{ms(max(kind.rtts)):6.1f} ms {ms(statistics.median(kind.sends)):6.1f} ms  "
                   f"{ms(kind.cpu_seconds / len(kind.rtts)):5.1f} ms")
    echo = kinds[-1]
    out.append("ratios nerbot / echo bot:")
    for kind in kinds[:-1]:
        r50 = statistics.median(kind.rtts) / statistics.median(echo.rtts)
        r95 = p95(kind.rtts) / p95(echo.rtts)
        out.append(f"  {kind.label:<22} p50 {r50:.2f}  target <= {TARGET_P50}  "
                   f"{verdict(r50, TARGET_P50)}   p95 {r95:.2f}  target <= {TARGET_P95}  "
                   f"{verdict(r95, TARGET_P95)}")
    skipped = [(kind.label, body) for kind in kinds for body in kind.skipped]
    out.append(f"other messages from the bots while waiting for a reply: {len(skipped)}"
               + "".join(f"\n  {label}: {body[:80]!r}" for label, body in skipped))


async def run(args: argparse.Namespace, workdir: Path) -> list[str]:
    out: list[str] = []
    ensure_installed(PEER_DIR)
    synapse = LocalSynapse(workdir / "synapse")
    bot: BotThread | None = None
    echo: EchoProcess | None = None
    peer: JsPeer | None = None
    try:
        setup_started = time.monotonic()
        await asyncio.to_thread(synapse.start)
        logger.info("Synapse at %s (PID %s)", synapse.url, synapse.pid)
        passwords = [secrets.token_urlsafe(12) for _ in range(3)]
        bot_id, echo_id, person_id = [
            await asyncio.to_thread(synapse.register_user, name, password)
            for name, password in zip(("nerbot", "echobot", "person"), passwords, strict=True)]

        # nerbot with default settings, on its own event loop in its own thread (as in
        # bench/verify.py): its CPU time is its thread's, and driving the peer never delays it.
        config = parse_config(
            {"matrix": {"homeserver": synapse.url, "user_id": bot_id},
             "storage": {"data_dir": str(workdir / "bot")}},
            {"NERBOT_PASSWORD": passwords[0]}, workdir)
        app = NerbotApp(config)
        bot = BotThread(app)
        await bot.call(app.start())
        assert app.session is not None
        bot_device = app.session.device_id
        echo = await EchoProcess.start(synapse.url, echo_id, passwords[1], workdir / "echobot")

        peer = await JsPeer.start(name="person")
        await peer.login(synapse.url, person_id, passwords[2], device_name="person")
        await peer.call("bootstrap_cross_signing", password=passwords[2])
        assert peer.device_id is not None
        person_device = peer.device_id
        bot_room = await dm(peer, bot_id, bot_device)
        echo_room = await dm(peer, echo_id, echo.device_id)
        setup_seconds = time.monotonic() - setup_started
        logger.info("Set up in %.1f s; nerbot DM %s, echo bot DM %s", setup_seconds, bot_room,
                    echo_room)

        kinds = [
            Kind("nerbot !help", bot_id, bot_room, lambda n: "!help",
                 lambda n: HELP_EXPECT, bot.cpu),
            # the report lists the person's sessions: their device ID is in it
            Kind("nerbot !backup-status", bot_id, bot_room, lambda n: "!backup-status",
                 lambda n: person_device, bot.cpu),
            Kind("echo bot", echo_id, echo_room, lambda n: f"ping {n}",
                 lambda n: f"echo: ping {n}", echo.cpu),
        ]
        seconds = await measure(args, peer, kinds, [bot.cpu, echo.cpu])
        out.append(f"setup: {setup_seconds:.1f} s; measured: {seconds:.1f} s; {args.count} rounds"
                   f" of each in blocks of {args.block} (rotating order), {args.warmup} warm-up"
                   f" rounds each, {args.gap:.2f} s between rounds")
        out.append(f"nerbot device {bot_device} (own thread; CPU: that thread), echo bot device "
                   f"{echo.device_id} (stock nio, own process; CPU: that process), person "
                   f"device {person_device} (matrix-js-sdk, Rust crypto)")
        report(args, kinds, out)
    finally:
        if peer is not None:
            await peer.close()
        if echo is not None:
            await echo.stop()
        if bot is not None:
            await bot.stop()
        await asyncio.to_thread(synapse.stop)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=200, help="measured rounds of each kind")
    parser.add_argument("--block", type=int, default=10,
                        help="rounds of one kind before the next kind's block")
    parser.add_argument("--warmup", type=int, default=5,
                        help="unmeasured rounds of each kind first")
    parser.add_argument("--gap", type=float, default=0.2,
                        help="seconds between a reply and the next message")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a reply")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where Synapse and the bots keep data (default: a temp dir)")
    args = parser.parse_args()
    if args.count < 2 or args.block < 1 or args.warmup < 0 or args.gap < 0:
        parser.error("--count >= 2, --block >= 1, --warmup >= 0, --gap >= 0")
    return run_and_print(run, args)


if __name__ == "__main__":
    sys.exit(main())
