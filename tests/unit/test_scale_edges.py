"""The Matrix edge's costs that grow with the community: m.direct, room-mates, DMs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from nerbot.errors import MatrixRequestError
from nerbot.ids import RoomId, UserId
from nerbot.matrix.events import EventRouter
from nerbot.matrix.transport import DirectRooms, is_private_dm
from nerbot.store import Store


class FakeHttp:
    def __init__(self, direct: dict[str, list[str]] | None = None) -> None:
        self.direct = direct
        self.calls: list[str] = []
        self.fail_put = False

    async def request(self, method: str, path: str, body: Any = None, **_: Any
                      ) -> tuple[int, dict[str, Any]]:
        assert path.endswith("/account_data/m.direct")
        self.calls.append(method)
        if method == "GET":
            if self.direct is None:
                raise MatrixRequestError("GET", path, 404, {"errcode": "M_NOT_FOUND"})
            return 200, dict(self.direct)
        if self.fail_put:
            raise MatrixRequestError("PUT", path, 502, {})
        self.direct = body
        return 200, {}


def dms(store: Store, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        store.set_dm_room(UserId(f"@p{i}:hs"), RoomId(f"!r{i}:hs"), i)


async def test_a_burst_of_new_dms_is_one_write_and_foreign_entries_stay() -> None:
    store, http = Store(":memory:"), FakeHttp({"@friend:hs": ["!old:hs"]})
    direct = DirectRooms(http, "@bot:hs", store, batch_seconds=0.05)  # type: ignore[arg-type]
    dms(store, 50)
    for _ in range(50):
        direct.changed()
    for _ in range(100):
        if direct.writes:
            break
        await asyncio.sleep(0.01)
    assert http.calls == ["GET", "PUT"] and direct.writes == 1
    assert http.direct is not None and http.direct["@friend:hs"] == ["!old:hs"]
    assert http.direct["@p49:hs"] == ["!r49:hs"] and len(http.direct) == 51
    dms(store, 1, start=50)
    direct.changed()
    await direct.close()  # on stop: at once, and no second read of the server's map
    assert http.calls == ["GET", "PUT", "PUT"] and http.direct["@p50:hs"] == ["!r50:hs"]


async def test_a_failed_write_is_written_later_and_reconcile_only_when_lacking() -> None:
    store, http = Store(":memory:"), FakeHttp()
    direct = DirectRooms(http, "@bot:hs", store, batch_seconds=0.01)  # type: ignore[arg-type]
    dms(store, 2)
    http.fail_put = True
    direct.changed()
    with pytest.raises(MatrixRequestError):
        await direct.flush()
    http.fail_put = False
    await direct.close()
    assert http.direct == {"@p0:hs": ["!r0:hs"], "@p1:hs": ["!r1:hs"]}
    # A restart: the server has everything, so no write; then it lacks one (a crash).
    again = DirectRooms(http, "@bot:hs", store)  # type: ignore[arg-type]
    http.calls.clear()
    await again.reconcile()
    assert http.calls == ["GET"]
    dms(store, 1, start=2)
    await again.reconcile()
    assert http.calls == ["GET", "GET", "PUT"] and "@p2:hs" in http.direct


def router(store: Store, rooms: dict[str, Any]) -> EventRouter:
    client = SimpleNamespace(rooms=rooms, user_id="@bot:hs")
    return EventRouter(client, store, None, None, frozenset(), 5,  # type: ignore[arg-type]
                       on_message=None, on_joined=None,  # type: ignore[arg-type]
                       on_undecryptable=None, not_before_ms=0)  # type: ignore[arg-type]


async def test_room_mates_are_counted_once_per_sync() -> None:
    store = Store(":memory:")
    rooms = {"!a:hs": SimpleNamespace(room_id="!a:hs", users={"@bot:hs": 1, "@x:hs": 1},
                                      invited_users={}, member_count=2)}
    events = router(store, rooms)
    assert events.shares_room("@x:hs") and not events.shares_room("@y:hs")
    rooms["!b:hs"] = SimpleNamespace(room_id="!b:hs", users={"@y:hs": 1, "@z:hs": 1},
                                     invited_users={"@z:hs": 1}, member_count=2)
    assert not events.shares_room("@y:hs")  # the same sync: the same answer
    await events._on_sync(SimpleNamespace(device_list=SimpleNamespace(changed=[])))  # type: ignore[arg-type]
    assert events.shares_room("@y:hs")
    # Only invited (a reminder DM not yet accepted): sync reports no device change of theirs.
    assert not events.shares_room("@z:hs")


async def test_device_changes_say_whether_they_come_with_the_first_sync() -> None:
    """The first sync of a process is full-state (Synapse lists every room-mate as changed);
    the app keeps the admin facts of the last run then, and only then."""
    seen: list[tuple[list[str], bool]] = []
    events = router(Store(":memory:"), {})
    events.on_devices_changed = lambda users, first: seen.append((users, first))
    for changed in (["@x:hs", "@y:hs"], [], ["@x:hs"]):
        await events._on_sync(SimpleNamespace(  # type: ignore[arg-type]
            device_list=SimpleNamespace(changed=changed)))
    assert seen == [(["@x:hs", "@y:hs"], True), (["@x:hs"], False)]


def test_a_room_with_two_members_is_a_dm_only_when_recorded_as_one() -> None:
    store = Store(":memory:")
    events = router(store, {})
    pair = SimpleNamespace(room_id="!pair:hs", users={"@bot:hs": 1, "@x:hs": 1},
                           invited_users={}, member_count=2)
    assert not events.is_dm(pair, "@x:hs")  # type: ignore[arg-type]
    store.set_dm_room(UserId("@x:hs"), RoomId("!pair:hs"), 0)
    assert events.is_dm(pair, "@x:hs")  # type: ignore[arg-type]


def test_a_recorded_dm_is_private_only_to_its_owner_and_only_while_nobody_else_is_in_it(
) -> None:
    """Someone else's details never go to a room a third person can read: an owner's DM
    that gained a member (joined or invited) is a group room, and so is someone else's DM
    for the sender (an ``is_direct`` invite into a big room records it as the inviter's)."""
    store = Store(":memory:")
    events = router(store, {})
    store.set_dm_room(UserId("@x:hs"), RoomId("!dm:hs"), 0)
    joined = SimpleNamespace(room_id="!dm:hs", users={"@bot:hs": 1, "@x:hs": 1, "@y:hs": 1},
                             invited_users={}, member_count=3)
    assert not events.is_dm(joined, "@y:hs")  # type: ignore[arg-type]
    assert not events.is_dm(joined, "@x:hs")  # type: ignore[arg-type]
    invited = SimpleNamespace(room_id="!dm:hs", users={"@bot:hs": 1, "@x:hs": 1, "@y:hs": 1},
                              invited_users={"@y:hs": 1}, member_count=2)
    assert not events.is_dm(invited, "@x:hs")  # type: ignore[arg-type]
    only_owner_invited = SimpleNamespace(room_id="!dm:hs", users={"@bot:hs": 1, "@x:hs": 1},
                                         invited_users={"@x:hs": 1}, member_count=1)
    assert events.is_dm(only_owner_invited, "@x:hs")  # type: ignore[arg-type]
    owner_left = SimpleNamespace(room_id="!dm:hs", users={"@bot:hs": 1}, invited_users={},
                                 member_count=1)
    assert not is_private_dm(owner_left, "@bot:hs", "@x:hs")  # type: ignore[arg-type]


class AdminHttp:
    """The Synapse admin API for two users; counts the requests."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def request(self, method: str, path: str, body: Any = None, **kw: Any
                      ) -> tuple[int, dict[str, Any]]:
        self.paths.append(path)
        if path.startswith("/_synapse/admin/v2/users?"):
            return 200, {"users": [{"name": "@a:hs"}, {"name": "@b:hs"}]}
        if path.endswith("/devices"):
            return 200, {"devices": [{"device_id": "D", "last_seen_ts": 5}]}
        if path.endswith("/accountdata"):
            return 200, {"account_data": {"global": {}}}
        return (404, {}) if "%40gone" in path else (200, {})


async def test_listed_users_skip_the_existence_check() -> None:
    from nerbot.matrix.admin import AdminProbe

    http = AdminHttp()
    probe = AdminProbe(http, "token", backup_check=False)  # type: ignore[arg-type]
    await probe.facts("@a:hs")
    assert len(http.paths) == 3  # not listed yet: exists? then devices and account data
    assert await probe.local_users() == ["@a:hs", "@b:hs"]
    http.paths.clear()
    facts = await probe.facts("@b:hs")
    assert facts.exists and facts.last_seen_ms == {"D": 5} and len(http.paths) == 2
    assert not (await probe.facts("@gone:hs")).exists


class SlowToClose:
    """An HTTP client whose close takes a while (connections to drain)."""

    def __init__(self) -> None:
        self.closing = asyncio.Event()
        self.release = asyncio.Event()
        self.closed = False

    async def close(self) -> None:
        self.closing.set()
        await self.release.wait()
        self.closed = True


async def test_a_second_stop_waits_for_the_first_to_finish() -> None:
    # SIGTERM's handler starts stop(); the CLI's ``finally`` calls it again as the main task
    # ends. Returning early there ended the loop with sessions still open (bench/scale.py's
    # bot logged "Unclosed client session" and never "nerbot stopped").
    from nerbot.app import NerbotApp
    from nerbot.config import parse_config

    raw = {"matrix": {"homeserver": "https://hs.example/", "user_id": "@bot:hs.example"}}
    app = NerbotApp(parse_config(raw, {"NERBOT_PASSWORD": "pw"}, Path("/srv/nerbot")))
    http = SlowToClose()
    app.http = http  # type: ignore[assignment]
    first, second = asyncio.ensure_future(app.stop()), asyncio.ensure_future(app.stop())
    closed_when_done: list[bool] = []
    second.add_done_callback(lambda _: closed_when_done.append(http.closed))
    await http.closing.wait()  # the first is closing the client now
    http.release.set()
    await asyncio.gather(first, second)
    assert closed_when_done == [True]



class Spawns:
    """A task runner that only notes what it was asked to start."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def spawn(self, work: Any, name: str) -> None:
        work.close()
        self.names.append(name)


async def test_an_invite_kept_from_the_last_run_is_decided_once_unless_this_run_did() -> None:
    store = Store(":memory:")
    events = router(store, {"!joined:hs": SimpleNamespace(room_id="!joined:hs")})
    events.client.invited_rooms = {room: SimpleNamespace(room_id=room)  # type: ignore[attr-defined]
                                   for room in ("!synced:hs", "!kept:hs")}
    events.runner = spawns = Spawns()  # type: ignore[assignment]
    await events._on_invite(SimpleNamespace(room_id="!synced:hs"),  # type: ignore[arg-type]
                            SimpleNamespace(state_key="@bot:hs", membership="invite",
                                            sender="@x:hs", content={}))
    # "!withdrawn:hs": kept at the stop, but the first sync said it is gone
    for room in ("!joined:hs", "!synced:hs", "!kept:hs", "!kept:hs", "!withdrawn:hs"):
        events.decide_kept_invite(room, "@x:hs", True)
    assert spawns.names == ["invite !synced:hs", "invite !kept:hs"]
