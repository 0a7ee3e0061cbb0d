"""A CPU-time sampling profiler for one thread, for benches where cProfile distorts too much.

cProfile charges every Python call, so code made of many small calls (asyncio, aiohttp, URL
quoting) looks 2-3x more expensive than it is. This samples instead: every ``interval`` a
helper thread reads the watched thread's CPU clock and its current stack, and charges the CPU
used since the last sample to that stack. Time the thread spends waiting costs nothing. The
GIL's switch interval is cut while sampling: otherwise the helper only gets to look when the
watched thread blocks (in a syscall), and every sample lands on ``select``, a socket write or
SQLite. Samples taken while the loop waits in ``select`` are dropped; the others share the
thread's measured CPU time. Even so, calls that release the GIL (socket writes, SQLite) come
out too large: check what this shows with a micro-benchmark before acting on it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from types import FrameType

Frame = tuple[str, int, str]  # file, first line, function
IDLE = {"select", "poll"}  # the event loop waiting: the thread uses no CPU there


class CpuSampler:
    """Samples one thread's stack, weighted by the CPU time it used between samples."""

    def __init__(self, thread: threading.Thread, interval: float = 0.0005) -> None:
        assert thread.ident is not None
        self.thread_id = thread.ident
        self.native_id = thread.native_id
        self.user_system = (0.0, 0.0)
        self.clock = time.pthread_getcpuclockid(thread.ident)
        self.interval = interval
        self.stacks: Counter[tuple[Frame, ...]] = Counter()
        self._running = threading.Event()
        self._sampler: threading.Thread | None = None
        self._switch_interval = sys.getswitchinterval()
        self._started_at = (0.0, 0.0)

    def _user_system(self) -> tuple[float, float]:
        """The thread's user and system CPU seconds so far (Linux ``/proc``)."""
        with open(f"/proc/self/task/{self.native_id}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def start(self) -> None:
        self._started_at = self._user_system()
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(self.interval / 10)
        self._running.set()
        self._sampler = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._sampler.start()

    def stop(self) -> None:
        self._running.clear()
        if self._sampler is not None:
            self._sampler.join()
            self._sampler = None
        sys.setswitchinterval(self._switch_interval)
        u, s_ = self._user_system()
        self.user_system = (self.user_system[0] + u - self._started_at[0],
                            self.user_system[1] + s_ - self._started_at[1])

    def _run(self) -> None:
        started = last = time.clock_gettime(self.clock)
        samples: Counter[tuple[Frame, ...]] = Counter()
        while self._running.is_set():
            time.sleep(self.interval)
            now = time.clock_gettime(self.clock)
            frame = sys._current_frames().get(self.thread_id)
            # a stack counts by the CPU used since the last look: a thread that was preempted
            # (or waiting) meanwhile shows a stack but has used nothing
            if frame is not None and frame.f_code.co_name not in IDLE and now > last:
                # capped: after the sampler itself waited long for a core, the delta spans
                # many bursts that this one stack does not stand for
                samples[self._stack(frame)] += min(now - last, 2 * self.interval)
            last = now
        # the CPU used just before the loop went idle is not seen: scale up to the measured total
        used = time.clock_gettime(self.clock) - started
        seen = sum(samples.values()) or 1e-9
        for stack, cpu in samples.items():
            self.stacks[stack] += cpu * used / seen

    @staticmethod
    def _stack(frame: FrameType | None) -> tuple[Frame, ...]:
        frames: list[Frame] = []
        while frame is not None:
            code = frame.f_code
            frames.append((code.co_filename, code.co_firstlineno, code.co_name))
            frame = frame.f_back
        return tuple(reversed(frames))

    def report(self, top: int = 40) -> str:
        """Self and inclusive CPU per function, in ms and % of the sampled total."""
        total = sum(self.stacks.values()) or 1e-9
        own: Counter[Frame] = Counter()
        inclusive: Counter[Frame] = Counter()
        for stack, cpu in self.stacks.items():
            own[stack[-1]] += cpu
            for frame in set(stack):
                inclusive[frame] += cpu

        def table(title: str, counts: Counter[Frame]) -> list[str]:
            lines = [f"{title} (of {total * 1000:.0f} ms sampled CPU)"]
            for (filename, line, name), cpu in counts.most_common(top):
                where = "/".join(filename.split("/")[-2:])
                lines.append(f"{cpu * 1000:9.1f} ms {cpu / total * 100:5.1f} %  "
                             f"{name} ({where}:{line})")
            return lines

        user, system = self.user_system
        head = [f"user {user * 1000:.0f} ms, system {system * 1000:.0f} ms"]
        return "\n".join(head + table("self", own) + [""] + table("inclusive", inclusive)) + "\n"
