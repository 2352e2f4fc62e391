"""Rate limits: a sliding-window counter, and the per-action limits the UI's handlers ask.

The gate counts login failures and uploads per client or session itself; `allow` is for
work the app starts from a websocket event (a training run), which the gate cannot see.
"""

from __future__ import annotations

import collections
import time

from backpropagate_core.errors import BackpropError


class RateLimiter:
    """At most `limit` hits per key in any `window` seconds (sliding window)."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit, self.window = limit, window
        self._hits: dict[str, collections.deque[float]] = {}

    def retry_after(self, key: str) -> int:
        """Seconds until one more hit is allowed; 0 when it is allowed now."""
        hits = self._hits.get(key)
        if not hits:
            return 0
        now = time.monotonic()
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) < self.limit:
            return 0
        return max(1, int(hits[0] + self.window - now + 0.999))

    def record(self, key: str) -> None:
        if len(self._hits) > 10_000:  # forget idle clients so memory stays bounded
            self._hits = {k: v for k, v in self._hits.items() if v and v[-1] > time.monotonic() - self.window}
        self._hits.setdefault(key, collections.deque()).append(time.monotonic())

    def hit(self, key: str) -> int:
        """Record a hit if allowed; returns 0, or the seconds to wait when not."""
        wait = self.retry_after(key)
        if not wait:
            self.record(key)
        return wait


_action_limits = {"start": RateLimiter(6)}


def allow(action: str, key: str = "*") -> None:
    """For the UI's handlers: raise UI_RATE_LIMITED when `action` ran too often in the last
    minute ("start": 6 training runs; each is a process working this machine hard)."""
    wait = _action_limits[action].hit(key)
    if wait:
        raise BackpropError("UI_RATE_LIMITED", f"too many {action} requests; try again in {wait} s")


MAX_WORKERS = 3
"""Engine workers (training runs, campaigns, exports) the UI lets run at once: a run, its
export and one more. Each works this machine hard; more would only slow them all."""


def room_for_worker(active: int) -> None:
    """For the UI's handlers: raise UI_RATE_LIMITED when `active` workers already run."""
    if active >= MAX_WORKERS:
        raise BackpropError("UI_RATE_LIMITED", f"{active} runs or exports are already running; "
                                               f"the app runs at most {MAX_WORKERS} at once",
                            hint="Wait for one to finish, or stop one on the Train or Runs page.")


def reset() -> None:
    """Forget every count (for tests that start many runs in a row)."""
    for limiter in _action_limits.values():
        limiter._hits.clear()
