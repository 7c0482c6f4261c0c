"""One clock for every wait and every measured duration.

The interface is databricks-sdk's ``Clock`` (``time()``, ``sleep(seconds)``): the SDK's
waiters and retry loop take one (``databricks.sdk.clock.Clock``), and so does every wait
in ptdeploy (``endpoints``, ``registry``, ``loadtest``, ``batch``), so a test passes one
fake (``tests/fakes.py`` ``FakeClock``) and nothing sleeps. Defined structurally, without
importing the SDK (a ``Protocol``): any SDK clock is one, and these are SDK clocks.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """``time()`` in seconds and ``sleep(seconds)``, as ``databricks.sdk.clock.Clock``."""

    def time(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class RealClock:
    """Wall-clock time (deadlines the user reads as dates)."""

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class MonotonicClock(RealClock):
    """Monotonic time: durations and latencies (never jumps with the system clock)."""

    def time(self) -> float:
        return time.monotonic()
