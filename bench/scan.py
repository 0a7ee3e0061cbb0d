"""Benchmark a full hygiene scan of a large community against a throw-away Synapse.

Run: ``uv run python bench/scan.py [--users N] [--seed S] [--workdir DIR] [--admin]``.

Sets up N users (1-3 devices, some cross-signed) in one room with the real bot, then times
(a) raw batched ``/keys/query`` for everyone, (b) the bot's cold full assessment, (c) a second
assessment with nothing changed, (d) a re-check after 20 users changed devices, and with
``--admin`` the admin-API facts for a sample. Prints times, ratios against targets and counters.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import pstats
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from nerbot.app import NerbotApp
from nerbot.config import Config, parse_config
from nerbot.domain.facts import AdminFacts, BackupState
from nerbot.hygiene import HygieneService
from nerbot.localdev.accounts import AccountBuilder, BuiltAccount
from nerbot.localdev.synapse import LocalSynapse
from nerbot.logs import configure_logging
from nerbot.matrix.admin import AdminProbe
from nerbot.matrix.crosssigning import verify_signature
from nerbot.matrix.http import MatrixHttp
from nerbot.matrix.keys import DEFAULT_BATCH, KEYS_QUERY, KeyDirectory, SignatureCache

logger = logging.getLogger("bench.scan")

T = TypeVar("T")

CHANGED_USERS = 20
INVALIDATION_TIMEOUT = 30.0
ADMIN_SAMPLE = 200
TARGET_COLD = 3.0  # (b)/(a)
TARGET_WARM = 0.1  # (c)/(a)
TARGET_DELTA = 0.05  # (d)/(b)


def ms(seconds: float) -> float:
    return seconds * 1000.0


def verdict(ratio: float, target: float) -> str:
    return "PASS" if ratio <= target else "MISS"


@dataclass
class DirectoryStats:
    """What the directory did, counted at its seams (HTTP below it, signature checks)."""

    requests: int = 0
    users_fetched: int = 0
    cache_hits: int = 0
    signatures_verified: int = 0
    signature_cache_hits: int = 0


class CountingHttp:
    """The bot's ``MatrixHttp`` as the directory and the admin probe see it, counted."""

    def __init__(self, http: MatrixHttp, stats: DirectoryStats) -> None:
        self.http, self.stats = http, stats

    async def request(self, method: str, path: str, body: Any = None, **options: Any) -> Any:
        self.stats.requests += 1
        if path == KEYS_QUERY and body is not None:
            self.stats.users_fetched += len(body["device_keys"])
        return await self.http.request(method, path, body, **options)


class CountingSignatures(SignatureCache):
    """Counts lookups here and real checks in the check function it is given."""

    def __init__(self, stats: DirectoryStats) -> None:
        def check(message: bytes, signature: str, key: Any) -> bool:
            stats.signatures_verified += 1
            return verify_signature(message, signature, key)

        super().__init__(check)
        self.stats = stats

    def verify_message(self, message: bytes, signature: str, public_key: str) -> bool:
        before = self.stats.signatures_verified
        result = super().verify_message(message, signature, public_key)
        self.stats.signature_cache_hits += self.stats.signatures_verified == before
        return result


def counted_directory(http: MatrixHttp, shares_room: Callable[[str], bool]
                      ) -> tuple[KeyDirectory, DirectoryStats]:
    """A new directory (cold caches) whose requests and signature checks are counted."""
    stats = DirectoryStats()
    directory = KeyDirectory(CountingHttp(http, stats), shares_room,  # type: ignore[arg-type]
                             signatures=CountingSignatures(stats))
    return directory, stats


async def assessed(hygiene: HygieneService, users: list[str], stats: DirectoryStats,
                   fresh: bool = False) -> dict[str, Any]:
    """``hygiene.assess``, counting the users answered from the directory's cache."""
    fetched = stats.users_fetched
    reports = await hygiene.assess(users, fresh=fresh)
    stats.cache_hits += len(users) - (stats.users_fetched - fetched)
    return reports


def stats_line(stats: DirectoryStats) -> str:
    return ", ".join(f"{k}={v}" for k, v in asdict(stats).items())


def stats_delta(before: dict[str, int], after: DirectoryStats) -> dict[str, int]:
    return {k: v - before[k] for k, v in asdict(after).items()}


async def timed(call: Callable[[], Awaitable[T]]) -> tuple[float, T]:
    started = time.perf_counter()
    result = await call()
    return time.perf_counter() - started, result


def parallel(items: Iterable[T], work: Callable[[T], Any], workers: int) -> list[Any]:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(work, items))


# -- setup (blocking; runs in a thread) ---------------------------------------------------------


class Setup:
    """Everything the timed part needs from the server side."""

    def __init__(self, synapse: LocalSynapse, bot_id: str, bot_password: str, room_id: str,
                 accounts: list[BuiltAccount], admin_token: str | None) -> None:
        self.synapse = synapse
        self.bot_id = bot_id
        self.bot_password = bot_password
        self.room_id = room_id
        self.accounts = accounts
        self.admin_token = admin_token


def build_world(synapse: LocalSynapse, users: int, seed: int, workers: int,
                admin: bool) -> Setup:
    started = time.monotonic()
    builder = AccountBuilder(synapse)
    run = uuid.uuid4().hex[:6]
    bot_password = secrets.token_urlsafe(12)
    bot_id = synapse.register_user(f"nerbot-{run}", bot_password)

    # The bot creates the community room from a temporary session (logged out again), so its
    # own device list is exactly the device the bot itself will log in with.
    login = synapse.login(bot_id, bot_password, "bench-setup")
    token = str(login["access_token"])
    try:
        room = synapse.request("POST", "/_matrix/client/v3/createRoom",
                               {"preset": "public_chat", "name": "bench community"},
                               token=token)
    finally:
        synapse.logout(token)
    room_id = str(room["room_id"])
    logger.info("Bot %s created room %s", bot_id, room_id)

    t = time.monotonic()
    accounts = builder.build_many(users, seed=seed, workers=workers, prefix=f"bench{run}")
    logger.info("Built %d users in %.1f s", users, time.monotonic() - t)

    t = time.monotonic()
    done = 0

    def join(account: BuiltAccount) -> None:
        nonlocal done
        builder.join_room(account, room_id)
        done += 1  # only read for progress logs; a lost increment would not matter
        if done % 250 == 0:
            logger.info("  %d/%d joined (%.1f s)", done, users, time.monotonic() - t)

    parallel(accounts, join, workers)
    logger.info("Joined %d users to the room in %.1f s", users, time.monotonic() - t)

    admin_token = None
    if admin:
        admin_password = secrets.token_urlsafe(12)
        synapse.register_user(f"bench-admin-{run}", admin_password, admin=True)
        admin_token = synapse.admin_access_token(f"bench-admin-{run}", admin_password)
        logger.info("Created admin user and token")
    logger.info("Setup took %.1f s", time.monotonic() - started)
    return Setup(synapse, bot_id, bot_password, room_id, accounts, admin_token)


def bot_config(setup: Setup, data_dir: Path) -> Config:
    raw: dict[str, Any] = {
        "matrix": {"homeserver": setup.synapse.url, "user_id": setup.bot_id,
                   "device_name": "nerbot"},
        "storage": {"data_dir": str(data_dir)},
        "bot": {"language": "en"},
        "synapse_admin": {"token": setup.admin_token or "",
                          "backup_check": "admin-login" if setup.admin_token else "off"},
    }
    return parse_config(raw, {"NERBOT_PASSWORD": setup.bot_password}, data_dir.parent)


# -- the timed part ---------------------------------------------------------------------------


async def raw_keys_query(http: MatrixHttp, users: list[str]) -> int:
    """What the server costs: batched /keys/query for everyone, JSON parsed, nothing else."""
    devices = 0
    for start in range(0, len(users), DEFAULT_BATCH):
        batch = users[start:start + DEFAULT_BATCH]
        _, response = await http.request(
            "POST", KEYS_QUERY, {"device_keys": {u: [] for u in batch}, "timeout": 10000})
        devices += sum(len(d) for d in response.get("device_keys", {}).values())
    return devices


class SyncWatch:
    """Wakes waiters whenever the bot's sync reports device-list changes."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()

    async def until_uncached(self, directory: KeyDirectory, users: list[str]) -> None:
        """Return once none of ``users`` is cached (TimeoutError after 30 s)."""
        try:
            async with asyncio.timeout(INVALIDATION_TIMEOUT):
                while any(directory.cached(u) is not None for u in users):
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            left = sum(directory.cached(u) is not None for u in users)
            raise TimeoutError(f"{left}/{len(users)} changed users still cached after "
                               f"{INVALIDATION_TIMEOUT:.0f} s") from None


async def profiled(enabled: bool, label: str, call: Callable[[], Awaitable[T]]
                   ) -> tuple[float, T]:
    """``timed(call)``, under cProfile when ``enabled`` (top functions go to stderr)."""
    if not enabled:
        return await timed(call)
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return await timed(call)
    finally:
        profiler.disable()
        sys.stderr.write(f"--- profile of {label} ---\n")
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(30)


async def measure(setup: Setup, app: NerbotApp, out: list[str], profile: bool) -> None:
    assert app.http is not None and app.events is not None and app.hygiene is not None
    users = [a.user_id for a in setup.accounts]
    n = len(users)
    http = app.http
    events = app.events
    in_room = sum(events.shares_room(u) for u in users)
    out.append(f"users: {n}, sharing a room with the bot: {in_room}, "
               f"devices: {sum(len(a.devices) for a in setup.accounts)}, "
               f"cross-signing: {sum(a.cross_signing is not None for a in setup.accounts)}, "
               f"batch size: {DEFAULT_BATCH}")

    # (a) raw /keys/query, median of 3
    raw_times = []
    devices = 0
    for _ in range(3):
        seconds, devices = await timed(lambda: raw_keys_query(http, users))
        raw_times.append(seconds)
    raw = statistics.median(raw_times)
    out.append(f"(a) raw /keys/query: {ms(raw):.0f} ms (median of "
               f"{', '.join(f'{ms(s):.0f}' for s in raw_times)}; {devices} devices)")

    # (b) cold: a new directory (and signature cache); the bot's sync invalidates it too.
    directory, counted = counted_directory(http, events.shares_room)
    hygiene = HygieneService(directory, None, app.hygiene.policy, app.clock)
    bot_invalidate = events.on_devices_changed

    watch = SyncWatch()

    def invalidate_both(changed: list[str]) -> None:
        if bot_invalidate is not None:
            bot_invalidate(changed)
        directory.invalidate(changed)
        watch.changed.set()

    events.on_devices_changed = invalidate_both
    cold, reports = await profiled(
        profile, "(b) cold", lambda: assessed(hygiene, users, counted, fresh=True))
    out.append(f"(b) cold full assessment: {ms(cold):.0f} ms ({len(reports)} reports)")
    out.append(f"    stats: {stats_line(counted)}")

    # (c) nothing changed
    before = asdict(counted)
    warm, _ = await profiled(profile, "(c) unchanged",
                             lambda: assessed(hygiene, users, counted))
    delta = stats_delta(before, counted)
    out.append(f"(c) second assessment, nothing changed: {ms(warm):.1f} ms "
               f"(users_fetched +{delta['users_fetched']}, requests +{delta['requests']}, "
               f"cache_hits +{delta['cache_hits']})")
    out.append(f"    stats: {stats_line(counted)}")

    # (d) 20 users get a new device; wait until sync invalidated exactly those.
    step = max(1, n // CHANGED_USERS)
    changed_accounts = setup.accounts[::step][:CHANGED_USERS]
    changed = [a.user_id for a in changed_accounts]
    builder = AccountBuilder(setup.synapse)
    change_started = time.monotonic()
    await asyncio.to_thread(
        parallel, changed_accounts,
        lambda a: builder.add_device(a, display_name="bench new device"), 8)
    await watch.until_uncached(directory, changed)
    waited = time.monotonic() - change_started
    dropped = sum(directory.cached(u) is None for u in users)
    out.append(f"(d) {len(changed)} users added a device; all invalidated by sync "
               f"{ms(waited):.0f} ms after the first change ({dropped} users uncached)")
    before = asdict(counted)
    recheck, reports = await timed(lambda: assessed(hygiene, users, counted))
    delta = stats_delta(before, counted)
    sessions_seen = sum(len(reports[u].sessions) for u in changed)
    sessions_expected = sum(len(a.devices) for a in changed_accounts)
    out.append(f"    re-check: {ms(recheck):.1f} ms (users_fetched +{delta['users_fetched']}, "
               f"requests +{delta['requests']}, signatures_verified "
               f"+{delta['signatures_verified']}, signature_cache_hits "
               f"+{delta['signature_cache_hits']})"
               + f"; their sessions: {sessions_seen} reported, {sessions_expected} expected")
    out.append(f"    stats: {stats_line(counted)}")

    out.append("ratios:")
    for label, ratio, target in (
        ("(b)/(a) cold vs raw      ", cold / raw, TARGET_COLD),
        ("(c)/(a) unchanged vs raw ", warm / raw, TARGET_WARM),
        ("(d)/(b) 20 changed vs cold", recheck / cold, TARGET_DELTA),
    ):
        out.append(f"  {label}: {ratio:.3f}  target <= {target}  {verdict(ratio, target)}")
    out.append(f"  (d) users_fetched = {delta['users_fetched']} (expected {len(changed)}): "
               f"{'PASS' if delta['users_fetched'] == len(changed) else 'MISS'}")
    out.append(f"signatures verified: {counted.signatures_verified}, "
               f"signature cache hits: {counted.signature_cache_hits}")

    if isinstance(app.hygiene.admin, AdminProbe):
        bot_probe, admin_stats = app.hygiene.admin, DirectoryStats()
        probe = AdminProbe(CountingHttp(http, admin_stats),  # type: ignore[arg-type]
                           bot_probe.token, bot_probe.backup_check,
                           app.config.synapse_admin.concurrency)
        sample = users[:ADMIN_SAMPLE]
        seconds, facts = await timed(lambda: admin_facts(probe, sample))
        made = admin_stats.requests
        backups = sum(f.backup.state is BackupState.PRESENT for f in facts.values())
        out.append(f"admin facts for {len(sample)} users (backup_check=admin-login, "
                   f"concurrency={app.config.synapse_admin.concurrency}): {ms(seconds):.0f} ms, "
                   f"{ms(seconds) / len(sample):.1f} ms per user, {made} requests "
                   f"({made / len(sample):.1f} per user), backups seen: {backups}, "
                   f"failed: {len(sample) - len(facts)}")


async def admin_facts(probe: AdminProbe, users: list[str]) -> dict[str, AdminFacts]:
    """Each user's admin facts, as the bot asks for them: one call per person, all at once
    (the probe bounds the concurrency), a failure logged and left out, never the others'."""
    answers = await asyncio.gather(*(probe.facts(u) for u in users), return_exceptions=True)
    facts: dict[str, AdminFacts] = {}
    for user_id, answer in zip(users, answers, strict=True):
        if isinstance(answer, BaseException):
            logger.warning("Admin facts for %s failed: %s: %s", user_id,
                           type(answer).__name__, answer)
        else:
            facts[user_id] = answer
    return facts


async def run(args: argparse.Namespace, workdir: Path) -> list[str]:
    out: list[str] = []
    synapse = LocalSynapse(workdir / "synapse")
    app: NerbotApp | None = None
    try:
        await asyncio.to_thread(synapse.install)
        await asyncio.to_thread(synapse.start)
        logger.info("Synapse at %s (PID %s)", synapse.url, synapse.pid)
        setup_started = time.monotonic()
        setup = await asyncio.to_thread(build_world, synapse, args.users, args.seed,
                                        args.workers, args.admin)
        setup_seconds = time.monotonic() - setup_started

        app = NerbotApp(bot_config(setup, workdir / "bot" / "data"))
        t = time.monotonic()
        await app.start()
        logger.info("Bot started (first sync) in %.1f s", time.monotonic() - t)
        out.append(f"setup: {setup_seconds:.1f} s, bot start: {time.monotonic() - t:.1f} s")
        await measure(setup, app, out, args.profile)
    finally:
        if app is not None:
            await app.stop()
        synapse.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where Synapse and the bot keep data (default: a temp dir)")
    parser.add_argument("--workers", type=int, default=8, help="setup threads")
    parser.add_argument("--admin", action="store_true",
                        help="also time admin-API facts (backup_check = admin-login)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile (b) and (c); the top functions go to stderr")
    args = parser.parse_args()
    return run_and_print(run, args)


def run_and_print(bench: Callable[[argparse.Namespace, Path], Coroutine[Any, Any, list[str]]],
                  args: argparse.Namespace) -> int:
    """Run a benchmark in ``--workdir`` (or a temporary one) and print its result lines."""
    configure_logging("INFO")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        lines = asyncio.run(bench(args, args.workdir.resolve()))
    else:
        with tempfile.TemporaryDirectory(prefix="nerbot-bench-") as tmp:
            lines = asyncio.run(bench(args, Path(tmp)))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
