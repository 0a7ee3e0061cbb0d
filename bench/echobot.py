"""A minimal E2EE echo bot on stock matrix-nio: the floor ``bench/commands.py`` measures against.

One ``nio.AsyncClient`` with encryption, its store in ``--store`` (a temp dir the caller owns),
``sync_forever`` as nio's examples run it. It joins every room it is invited to and answers
every text message in an encrypted room with a short notice (``echo: <body>``). Nothing of
nerbot: no matrix layer, no patches of nio. ``bench/commands.py`` runs it in its own process
so that nerbot's process-wide changes to nio (its compiled schema validation) never reach it.

    ECHOBOT_PASSWORD=... python bench/echobot.py --homeserver URL --user-id @echo:localhost \
        --store DIR

Protocol on stdout, one JSON object per line: ``{"ready": true, "device_id": ...}`` once the
first sync is done; for each ``cpu`` line read on stdin, ``{"cpu": <process CPU seconds>}``.
End of stdin (or SIGTERM) stops it: sync cancelled, client closed. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import nio

logger = logging.getLogger("bench.echobot")

PASSWORD_ENV = "ECHOBOT_PASSWORD"
SYNC_TIMEOUT_MS = 30_000


class EchoBot:
    """Joins on invite; answers each text message in an encrypted room with one notice."""

    def __init__(self, homeserver: str, user_id: str, store: Path) -> None:
        config = nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
        self.client = nio.AsyncClient(homeserver, user_id, store_path=str(store), config=config)
        self.client.add_event_callback(self.on_invite, nio.InviteMemberEvent)
        self.client.add_event_callback(self.on_text, nio.RoomMessageText)
        self.joining: set[str] = set()
        self.answered = 0

    async def on_invite(self, room: nio.MatrixRoom, event: nio.InviteMemberEvent) -> None:
        # every stripped state event of an invite comes as one: join once per room
        if (event.state_key != self.client.user_id or event.membership != "invite"
                or room.room_id in self.joining):
            return
        self.joining.add(room.room_id)
        response = await self.client.join(room.room_id)
        if not isinstance(response, nio.JoinResponse):
            logger.warning("Could not join %s: %s", room.room_id, response)
            self.joining.discard(room.room_id)

    async def on_text(self, room: nio.MatrixRoom, event: nio.RoomMessageText) -> None:
        if event.sender == self.client.user_id or not room.encrypted:
            return
        response = await self.client.room_send(
            room.room_id, "m.room.message", {"msgtype": "m.notice", "body": f"echo: {event.body}"},
            ignore_unverified_devices=True)
        if isinstance(response, nio.RoomSendResponse):
            self.answered += 1
        else:
            logger.warning("Could not answer in %s: %s", room.room_id, response)

    async def run(self, password: str, ready: asyncio.Event) -> None:
        response = await self.client.login(password, device_name="echobot")
        if not isinstance(response, nio.LoginResponse):
            raise RuntimeError(f"echo bot login failed: {response}")
        sync = asyncio.create_task(self.client.sync_forever(timeout=SYNC_TIMEOUT_MS,
                                                            full_state=True))
        try:
            synced = asyncio.create_task(self.client.synced.wait())
            await asyncio.wait({sync, synced}, return_when=asyncio.FIRST_COMPLETED)
            if sync.done():
                sync.result()  # the sync loop died before its first sync: raise why
            synced.cancel()
            ready.set()
            await sync
        finally:
            sync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sync
            await self.client.close()


def reply(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        raise SystemExit(f"{PASSWORD_ENV} is not set")
    args.store.mkdir(parents=True, exist_ok=True)
    bot = EchoBot(args.homeserver, args.user_id, args.store)
    ready = asyncio.Event()
    running = asyncio.create_task(bot.run(password, ready))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, running.cancel)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    async def commands() -> None:
        await ready.wait()
        reply({"ready": True, "device_id": bot.client.device_id})
        async for line in stdin:
            if line.strip() == b"cpu":
                reply({"cpu": time.process_time(), "answered": bot.answered})
        running.cancel()  # end of stdin: the caller is done with us

    served = asyncio.create_task(commands())
    try:
        await running
    except asyncio.CancelledError:
        pass
    finally:
        served.cancel()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--homeserver", required=True)
    parser.add_argument("--user-id", required=True)
    parser.add_argument("--store", type=Path, required=True)
    raise SystemExit(asyncio.run(main(parser.parse_args())))
