"""Benchmark: the bot's CPU per homeserver request, nio on aiohttp vs nio on our WireClient.

Starts a throw-away Synapse on 127.0.0.1, logs one user in twice (two nio clients, each with
the bot's shims; one keeps aiohttp, one goes over ``nerbot.matrix.wire``), and times
``time.thread_time()`` per request for the same requests, in alternating rounds so that a
noisy machine hurts both alike. Prints the medians and the ratio wire/aiohttp (target ≤ 0.8).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nio

from nerbot.localdev.synapse import LocalSynapse
from nerbot.matrix import schemafix
from nerbot.matrix.httpfix import route_requests_over_wire, use_lean_session

TARGET_RATIO = 0.8


async def client(synapse: LocalSynapse, user_id: str, password: str, wire: bool
                 ) -> nio.AsyncClient:
    matrix = nio.AsyncClient(synapse.url, user_id)
    await matrix.login(password)
    await use_lean_session(matrix)
    if wire:
        route_requests_over_wire(matrix)
    return matrix


async def cpu_per_call(call: Callable[[], Awaitable[object]], n: int) -> float:
    started = time.thread_time()
    for _ in range(n):
        await call()
    return (time.thread_time() - started) / n


async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    schemafix.install()
    workdir = Path(tempfile.mkdtemp(prefix="nerbot-bench-wire-"))
    synapse = LocalSynapse(workdir / "synapse")
    clients: list[nio.AsyncClient] = []
    try:
        await asyncio.to_thread(synapse.start)
        user_id = await asyncio.to_thread(synapse.register_user, "bench", "bench-password")
        clients = [await client(synapse, user_id, "bench-password", wire) for wire in (False, True)]
        room = await clients[0].room_create()
        assert isinstance(room, nio.RoomCreateResponse), room
        counter = 0

        def calls(matrix: nio.AsyncClient) -> dict[str, Callable[[], Awaitable[object]]]:
            async def room_send() -> object:
                nonlocal counter
                counter += 1
                return await matrix.room_send(room.room_id, "m.room.message",
                                              {"msgtype": "m.notice", "body": f"n{counter}"})
            return {"whoami (GET)": matrix.whoami, "room send (PUT)": room_send}

        results: dict[tuple[str, bool], list[float]] = {}
        for _ in range(args.rounds):
            for wire, matrix in zip((False, True), clients, strict=True):
                for name, call in calls(matrix).items():
                    await call()  # warm: connection open, schemas compiled
                    results.setdefault((name, wire), []).append(
                        await cpu_per_call(call, args.requests))
        out = sys.stdout
        out.write(f"{'request':<18} {'aiohttp':>10} {'wire':>10}  wire/aiohttp\n")
        for name in calls(clients[0]):
            old = statistics.median(results[(name, False)])
            new = statistics.median(results[(name, True)])
            ratio = new / old
            out.write(f"{name:<18} {old * 1000:7.3f} ms {new * 1000:7.3f} ms  {ratio:8.2f} "
                      f"{'PASS' if ratio <= TARGET_RATIO else 'MISS'}\n")
        return 0
    finally:
        for matrix in clients:
            await matrix.close()
        await asyncio.to_thread(synapse.stop)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=100, help="per round and kind")
    raise SystemExit(asyncio.run(main(parser.parse_args())))
