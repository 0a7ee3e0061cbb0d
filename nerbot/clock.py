"""The real clock (tests inject their own ``Clock``)."""

from __future__ import annotations

import time


class SystemClock:
    """Milliseconds since the epoch from the system clock."""

    def now_ms(self) -> int:
        return int(time.time() * 1000)
