"""Waiting for the homeserver: probes while unreachable, backoff while erring, and a sync loop
that never turns an error into a full-state sync."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import aiohttp
import nio
import pytest
from fakes import SyncSurface

from nerbot.errors import MatrixRequestError
from nerbot.matrix.reachability import Recovery, backoff_delay, versions_probe
from nerbot.matrix.syncer import SyncLoop


class Sleeps:
    def __init__(self) -> None:
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


async def test_unreachable_is_probed_at_a_steady_pace_not_a_growing_one() -> None:
    answers = iter([False, False, False, True])

    async def probe() -> bool:
        return next(answers)

    sleeps = Sleeps()
    recovery = Recovery(probe, probe_seconds=2.0, sleep=sleeps)
    await recovery.back_off()
    await recovery.back_off()
    assert recovery.delay == 4.0
    assert await recovery.wait_until_reachable() == 3
    assert sleeps.slept == [1.0, 2.0, 2.0, 2.0, 2.0]
    assert recovery.delay == 1.0  # it answered: the backoff starts over


async def test_backoff_doubles_up_to_its_cap() -> None:
    sleeps = Sleeps()
    recovery = Recovery(lambda: asyncio.sleep(0, True), max_backoff_seconds=5, sleep=sleeps)
    for _ in range(5):
        await recovery.back_off()
    assert sleeps.slept == [1.0, 2.0, 4.0, 5.0, 5.0]


@pytest.mark.parametrize(("error", "reachable"), [
    (None, True),
    (aiohttp.ClientConnectionError(), False),
    (ConnectionRefusedError(), False),
    (TimeoutError(), False),
    (MatrixRequestError("GET", "/versions", 502, {}), False),  # a proxy in front of nothing
    (MatrixRequestError("GET", "/versions", 404, {}), True),   # it answered, if oddly
])
async def test_what_counts_as_an_answer(error: BaseException | None, reachable: bool) -> None:
    async def request() -> None:
        if error is not None:
            raise error

    assert await versions_probe(request)() is reachable


async def test_a_disk_error_is_no_outage() -> None:
    async def request() -> None:
        raise PermissionError("read-only file system")

    with pytest.raises(PermissionError):
        await versions_probe(request)()


class FlakyClient(SyncSurface):
    """A nio client's sync surface: the second sync fails to connect, the others answer."""

    def __init__(self) -> None:
        super().__init__()
        self.full_state: list[bool | None] = []

    async def sync(self, timeout: int, sync_filter: Any,  # noqa: ASYNC109 (nio's signature)
                   full_state: bool | None = None) -> Any:
        self.full_state.append(full_state)
        if len(self.full_state) == 2:
            raise aiohttp.ClientConnectionError("homeserver gone")
        if len(self.full_state) == 4 and self.loop is not None:
            self.loop.stop()
        return nio.SyncResponse("t", None, None, None, None, None)  # type: ignore[arg-type]


async def test_after_an_outage_the_sync_resumes_from_its_token_and_says_so() -> None:
    client, reconnected = FlakyClient(), []
    probes = iter([False, True])

    async def probe() -> bool:
        return next(probes)

    loop = SyncLoop(client, Recovery(probe, sleep=Sleeps()),  # type: ignore[arg-type]
                    on_reconnected=lambda: reconnected.append(len(client.full_state)))
    client.loop = loop
    await loop.run()
    assert client.full_state == [True, None, None, None]  # only the very first is full-state
    assert reconnected == [3]  # once, at the first sync after the outage


class RememberingClient(FlakyClient):
    """Answers every sync; at the second, notes whether the first response is still alive."""

    def __init__(self) -> None:
        super().__init__()
        self.first: list[weakref.ref[Any]] = []
        self.alive_at_second_sync: list[bool] = []

    async def sync(self, timeout: int, sync_filter: Any,  # noqa: ASYNC109 (nio's signature)
                   full_state: bool | None = None) -> Any:
        response = nio.SyncResponse("t", None, None, None, None, None)  # type: ignore[arg-type]
        if self.first:
            gc.collect()
            self.alive_at_second_sync.append(self.first[0]() is not None)
            assert self.loop is not None
            self.loop.stop()
        else:
            self.first.append(weakref.ref(response))
        return response


async def test_the_first_syncs_response_is_freed_once_processed() -> None:
    # With thousands of DMs the first sync's response (parsed events and raw body) was ~90 MB,
    # kept alive by a local variable of the sync loop for the life of the process.
    client = RememberingClient()

    async def probe() -> bool:
        return True

    client.loop = SyncLoop(client, Recovery(probe))  # type: ignore[arg-type]
    await client.loop.run()
    assert client.alive_at_second_sync == [False]


def test_one_backoff_rule_for_the_homeserver_and_the_alert_retries() -> None:
    assert [backoff_delay(30.0, step) for step in (1, 2, 3, 4, 5)] == [30, 60, 120, 240, 480]
    assert [backoff_delay(1.0, step, cap=5) for step in (1, 2, 3, 4, 100_000)] == [1, 2, 4, 5, 5]
    assert backoff_delay(1.0, 0) == 1.0  # no try yet waits the first step, never less


async def test_recovery_waits_by_the_one_backoff_rule() -> None:
    recovery = Recovery(lambda: asyncio.sleep(0, True), max_backoff_seconds=5, sleep=Sleeps())
    for errors in range(6):
        assert recovery.delay == backoff_delay(1.0, errors + 1, 5)
        await recovery.back_off()


class KeyQueries:
    """nio's key query as the sync loop sees it: planned when needed, refused when not."""

    def __init__(self) -> None:
        self.users = {"@a:hs"}
        self.outgoing_to_device_messages: list[Any] = []
        self.should_upload_keys = self.should_claim_keys = False
        self.seen: list[Any] = []

    @property
    def should_query_keys(self) -> bool:
        return bool(self.users)

    async def keys_query(self) -> str:
        if not self.users:
            raise nio.LocalProtocolError("No key query required.")
        self.users.clear()
        return "queried"

    def add_response_callback(self, callback: Any, kind: Any) -> None:
        pass

    async def run_response_callbacks(self, responses: list[Any]) -> None:
        self.seen += responses


async def test_a_key_query_someone_else_did_meanwhile_is_skipped_not_a_sync_failure() -> None:
    """A message's own send queried the keys after the loop planned its query: nio refused
    the second one with LocalProtocolError, and the whole sync loop restarted (seen in the
    live fuzz suite)."""
    async def probe() -> bool:
        return True

    client = KeyQueries()
    loop = SyncLoop(client, Recovery(probe))  # type: ignore[arg-type]
    planned = loop._side_requests()
    client.users.clear()  # the send's own query, between the plan and the request
    await loop._run_all(planned)
    assert client.seen == []
    client.users.add("@b:hs")
    await loop._run_all(loop._side_requests())
    assert client.seen == ["queried"]
