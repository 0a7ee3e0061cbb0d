"""Benchmark the reminder scan and the paced DM send phase against a throw-away Synapse.

Run: ``uv run python bench/reminders.py [--users N | --quick] [--ceiling PER_MINUTE] [--send N]
[--verify N] [--profile]``.

Sets up N users (1-3 devices, about 60 % with cross-signing: ``AccountBuilder.plan_many``) in
one room with the real bot (``[reminders] scope = "rooms"``, no grace, no quiet hours, the
scheduler off), then times (1) one full ``ReminderService.scan(deliver=False)``: audience,
assessment, alert bookkeeping, decisions and outbox records; (2) the send phase,
``OutboxSender.deliver()`` paced at ``--ceiling`` sends per minute, one new encrypted DM room
per user, checked afterwards on the homeserver (admin API) for lost and duplicated messages;
(3) a second scan straight away, which must queue nothing (exactly once: the backoff holds).
Prints users/s, DMs/s and the achieved send rate against the ceiling (target >= 0.9, with
zero lost and zero duplicated reminders) with PASS/MISS, plus where the time per DM went.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import inspect
import logging
import pstats
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.scan import (  # the 2,000-user world of bench/scan.py
    Setup,
    build_world,
    parallel,
    run_and_print,
)
from nerbot.app import NerbotApp
from nerbot.config import Config, parse_config
from nerbot.localdev.synapse import LocalSynapse, SynapseError
from nerbot.reminder_service import ScanStats
from nerbot.store import OutboxMessage, Store

logger = logging.getLogger("bench.reminders")

T = TypeVar("T")

QUICK_USERS = 200
TARGET_RATE = 0.9  # achieved sends/s over the configured ceiling, at least
DEFAULT_VERIFY = 200
MESSAGES_LIMIT = 50  # events read back per DM room (a fresh DM has ~8 state events and 1 message)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def per_second(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


# -- instrumentation --------------------------------------------------------------------------


@dataclass
class Timings:
    """Wall time per call of selected methods, recorded by wrapping them on the instance.

    Only instance attributes are replaced (``restore`` deletes or resets them), so the product
    code runs unchanged; the wrappers cost a ``perf_counter`` pair per call.
    """

    calls: dict[str, list[float]] = field(default_factory=dict)
    _patched: list[tuple[object, str, Any, bool]] = field(default_factory=list)

    def wrap(self, owner: object, attribute: str, label: str) -> None:
        original = getattr(owner, attribute)
        had_own = attribute in getattr(owner, "__dict__", {})
        samples = self.calls.setdefault(label, [])
        if inspect.iscoroutinefunction(original):
            @functools.wraps(original)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    samples.append(time.perf_counter() - started)
            setattr(owner, attribute, timed_async)
        else:
            @functools.wraps(original)
            def timed_sync(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    samples.append(time.perf_counter() - started)
            setattr(owner, attribute, timed_sync)
        self._patched.append((owner, attribute, original, had_own))

    def restore(self) -> None:
        for owner, attribute, original, had_own in reversed(self._patched):
            if had_own:
                setattr(owner, attribute, original)
            else:
                delattr(owner, attribute)
        self._patched.clear()

    def reset(self) -> None:
        for samples in self.calls.values():
            samples.clear()

    def lines(self, indent: str = "    ") -> list[str]:
        out = []
        for label, samples in self.calls.items():
            if not samples:
                continue
            ordered = sorted(samples)
            p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
            out.append(f"{indent}{label:<34} {len(samples):6d} calls  {sum(samples):8.2f} s  "
                       f"mean {1000 * statistics.fmean(samples):8.1f} ms  "
                       f"p95 {1000 * p95:8.1f} ms")
        return out


class SelectedOutbox:
    """The store as ``OutboxSender`` sees it during the send phase: only the selected rows.

    Everything else passes through to the real ``Store``; rows not selected stay pending in the
    database (not lost, just not part of this send phase).
    """

    def __init__(self, store: Store, keys: set[str]) -> None:
        self._store = store
        self._keys = keys

    def pending_messages(self, limit: int = 1000) -> list[OutboxMessage]:
        selected = [m for m in self._store.pending_messages(limit=1_000_000)
                    if m.key in self._keys]
        return selected[:limit]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


# -- setup (blocking; runs in a thread) ---------------------------------------------------------


def bot_config(setup: Setup, data_dir: Path, ceiling: int) -> Config:
    raw: dict[str, Any] = {
        "matrix": {"homeserver": setup.synapse.url, "user_id": setup.bot_id,
                   "device_name": "nerbot"},
        "storage": {"data_dir": str(data_dir)},
        "bot": {"language": "en"},
        # The scheduler stays off: the benchmark calls scan() and deliver() itself.
        "reminders": {"enabled": False, "scope": "rooms", "grace": "0", "quiet_hours": "",
                      "max_sends_per_minute": ceiling},
        "alerts": {"enabled": False},
    }
    return parse_config(raw, {"NERBOT_PASSWORD": setup.bot_password}, data_dir.parent)


# -- checking the homeserver ------------------------------------------------------------------


@dataclass
class ServerCheck:
    checked: int = 0
    exactly_once: int = 0
    missing: int = 0       # no bot message in the room, or not the event ID the outbox recorded
    duplicates: int = 0    # bot messages beyond the first
    errors: list[str] = field(default_factory=list)


def check_on_server(setup: Setup, messages: list[OutboxMessage], workers: int) -> ServerCheck:
    """Read each message's DM room back through the admin API; count the bot's events."""
    result = ServerCheck()

    def one(message: OutboxMessage) -> tuple[int, bool] | str:
        assert message.room_id is not None
        path = LocalSynapse.api_path("/_synapse/admin/v1/rooms/{}/messages", message.room_id)
        try:
            page = setup.synapse.request(
                "GET", f"{path}?dir=b&limit={MESSAGES_LIMIT}", token=setup.admin_token)
        except SynapseError as exc:
            return f"{message.room_id}: {exc}"
        mine = [e for e in page.get("chunk", [])
                if e.get("sender") == setup.bot_id and e.get("type") == "m.room.encrypted"]
        return len(mine), any(e.get("event_id") == message.event_id for e in mine)

    for answer in parallel(messages, one, workers):
        result.checked += 1
        if isinstance(answer, str):
            result.errors.append(answer)
            continue
        count, recorded = answer
        if count == 1 and recorded:
            result.exactly_once += 1
        if count == 0 or not recorded:
            result.missing += 1
        result.duplicates += max(0, count - 1)
    return result


def sample(items: list[T], size: int) -> list[T]:
    """``size`` items spread evenly over the list (all of them for 0 or a size >= the list)."""
    if size <= 0 or size >= len(items):
        return list(items)
    step = len(items) / size
    return [items[int(i * step)] for i in range(size)]


# -- the timed part ---------------------------------------------------------------------------


def held_line(stats: ScanStats) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(stats.held.items())) or "none"


def watch_scan(app: NerbotApp, timings: Timings) -> None:
    service = app.reminders
    assert service is not None
    timings.wrap(service, "audience", "audience (room members)")
    timings.wrap(service.hygiene, "assess", "assess (keys, cold cache)")
    if service.observe_keys is not None:
        timings.wrap(service, "observe_keys", "observe_keys (alert bookkeeping)")
    timings.wrap(service, "queue", "queue (decide + outbox record)")


def watch_sends(app: NerbotApp, timings: Timings) -> None:
    """Our own transport's steps only: nio's objects are never wrapped (used as shipped)."""
    transport = app.transport
    assert transport is not None
    timings.wrap(transport, "ensure_dm", "ensure_dm (open the DM)")
    timings.wrap(transport.direct, "flush", "  m.direct batch write (GET once + PUT)")
    timings.wrap(transport, "wait_for_room", "  wait_for_room (until sync has it)")
    timings.wrap(transport, "send_notice", "send_notice (encrypt + send)")


async def measure(setup: Setup, app: NerbotApp, args: argparse.Namespace,
                  out: list[str]) -> None:
    reminders, outbox, store = app.reminders, app.outbox, app.store
    assert reminders is not None and outbox is not None and store is not None
    n = len(setup.accounts)
    ceiling = args.ceiling
    out.append(f"users: {n} (cross-signing: "
               f"{sum(a.cross_signing is not None for a in setup.accounts)}, devices: "
               f"{sum(len(a.devices) for a in setup.accounts)}), ceiling: {ceiling}/min "
               f"({ceiling / 60:.1f}/s)")

    # (1) one full scan-and-decide pass
    timings = Timings()
    watch_scan(app, timings)
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    started = time.perf_counter()
    first = await reminders.scan(deliver=False)
    scan_wall = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
        sys.stderr.write("--- profile of (1) scan and decide ---\n")
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(30)
    timings.restore()
    out.append(f"(1) scan and decide: {first.users} users in {first.scan_seconds:.2f} s "
               f"({per_second(first.users, first.scan_seconds):.0f} users/s; wall "
               f"{scan_wall:.2f} s)")
    out.append(f"    queued {first.queued}; held: {held_line(first)}")
    out.extend(timings.lines())

    pending = store.pending_messages(limit=1_000_000)
    wanted = len(pending) if args.send is None else max(0, args.send)
    chosen = sample(pending, wanted) if wanted else []
    selected = {m.key for m in chosen}
    out.append(f"    outbox: {len(pending)} pending after the scan; {len(selected)} selected "
               f"for the send phase")

    # (2) the send phase
    rate_ok = lost_ok = dup_ok = False
    if selected:
        send_timings = Timings()
        watch_sends(app, send_timings)
        outbox.store = SelectedOutbox(store, selected)  # type: ignore[assignment]
        try:
            started = time.perf_counter()
            delivery = await outbox.deliver()
            send_wall = time.perf_counter() - started
        finally:
            outbox.store = store
            send_timings.restore()
        rows = {m.key: m for m in store.outbox() if m.key in selected}
        sent = [m for m in rows.values() if m.status == "sent"]
        still_pending = sum(m.status == "pending" for m in rows.values())
        failed = sum(m.status == "failed" for m in rows.values())
        lost = len(selected) - len(sent) - still_pending
        rate = per_second(delivery.sent, delivery.seconds)
        ratio = rate / (ceiling / 60)
        rate_ok, lost_ok = ratio >= TARGET_RATE, lost == 0 and still_pending == 0
        out.append(f"(2) send phase: {delivery.sent} DMs sent, {delivery.failed} failed "
                   f"attempts, in {delivery.seconds:.2f} s (wall {send_wall:.2f} s): "
                   f"{rate:.2f} DMs/s")
        out.append(f"    achieved rate / ceiling: {rate:.2f} / {ceiling / 60:.2f} = "
                   f"{ratio:.3f}  target >= {TARGET_RATE}  {verdict(rate_ok)}")
        per_dm = delivery.seconds / max(1, delivery.sent)
        out.append(f"    per DM: {1000 * per_dm:.0f} ms wall, pacing slot "
                   f"{60_000 / ceiling:.0f} ms")
        out.extend(send_timings.lines())
        out.append(f"    outbox rows selected: {len(selected)}: sent {len(sent)}, "
                   f"still pending {still_pending}, failed {failed}")
        out.append(f"    lost (selected − sent − still pending): {lost}, still pending: "
                   f"{still_pending}  target 0 and 0  {verdict(lost_ok)}")

        to_check = sample(sent, args.verify)
        t = time.perf_counter()
        check = await asyncio.to_thread(check_on_server, setup, to_check, args.workers)
        dup_ok = check.duplicates == 0 and check.missing == 0 and not check.errors
        out.append(f"    on the server ({check.checked} of {len(sent)} sent DMs read back "
                   f"through the admin API in {time.perf_counter() - t:.1f} s): exactly once "
                   f"{check.exactly_once}, missing {check.missing}, duplicates "
                   f"{check.duplicates}  target 0 missing, 0 duplicates  {verdict(dup_ok)}")
        for error in check.errors[:5]:
            out.append(f"      error: {error}")
    else:
        out.append("(2) send phase: nothing selected, skipped")

    # (3) an immediate second scan must queue nothing
    before = len(store.outbox())
    second = await reminders.scan(deliver=False)
    created = len(store.outbox()) - before
    again_ok = second.queued == 0 and created == 0
    out.append(f"(3) second scan right away: {second.users} users in {second.scan_seconds:.2f} s "
               f"({per_second(second.users, second.scan_seconds):.0f} users/s); queued "
               f"{second.queued}, new outbox rows {created}  target 0  {verdict(again_ok)}")
    out.append(f"    held: {held_line(second)}")

    out.append("summary:")
    if selected:
        out.append(f"  send rate / ceiling >= {TARGET_RATE}: {verdict(rate_ok)}; "
                   f"zero lost: {verdict(lost_ok)}; exactly once on the server: "
                   f"{verdict(dup_ok)}; nothing re-queued: {verdict(again_ok)}")
    else:
        out.append(f"  nothing re-queued: {verdict(again_ok)}")


async def run(args: argparse.Namespace, workdir: Path) -> list[str]:
    out: list[str] = []
    synapse = LocalSynapse(workdir / "synapse")
    app: NerbotApp | None = None
    try:
        await asyncio.to_thread(synapse.install)
        await asyncio.to_thread(synapse.start)
        logger.info("Synapse at %s (PID %s)", synapse.url, synapse.pid)
        setup_started = time.monotonic()
        # The admin token only reads the DM rooms back; the bot never gets it.
        setup = await asyncio.to_thread(build_world, synapse, args.users, args.seed,
                                        args.workers, True)
        setup_seconds = time.monotonic() - setup_started

        app = NerbotApp(bot_config(setup, workdir / "bot" / "data", args.ceiling))
        t = time.monotonic()
        await app.start()
        logger.info("Bot started (first sync) in %.1f s", time.monotonic() - t)
        out.append(f"setup: {setup_seconds:.1f} s, bot start: {time.monotonic() - t:.1f} s")
        await measure(setup, app, args, out)
    finally:
        if app is not None:
            await app.stop()
        synapse.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--quick", action="store_true",
                        help=f"a fast check with {QUICK_USERS} users (overrides --users)")
    parser.add_argument("--ceiling", type=int, default=120, metavar="PER_MINUTE",
                        help="reminders.max_sends_per_minute for the run (default 120 = 2/s)")
    parser.add_argument("--send", type=int, default=None, metavar="N",
                        help="DM only N of the due users, spread over the outbox order "
                             "(default: all of them; the rest stay pending)")
    parser.add_argument("--verify", type=int, default=DEFAULT_VERIFY, metavar="N",
                        help=f"read N sent DMs back from the server (default {DEFAULT_VERIFY}; "
                             "0 = all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where Synapse and the bot keep data (default: a temp dir)")
    parser.add_argument("--workers", type=int, default=8,
                        help="setup threads (also used to read the DMs back)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile (1); the top functions go to stderr")
    args = parser.parse_args()
    if args.quick:
        args.users = QUICK_USERS
    return run_and_print(run, args)


if __name__ == "__main__":
    sys.exit(main())
