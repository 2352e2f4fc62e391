"""Engine work from a UI background task: off the event loop, failures as coded errors.

This is the UI's outer edge. Whatever a blocking engine call raises ends here as the
`{code, message, hint}` dict the pages show (`components.error_callout`), so a handler
never dies silently and never leaves a button spinning.
"""

from __future__ import annotations

import asyncio
from typing import Callable, TypeVar

from backpropagate_app.display import error_view, unexpected_error
from backpropagate_core.errors import BackpropError

T = TypeVar("T")


async def attempt(work: Callable[..., T], *args, **kwargs) -> tuple[T | None, dict[str, str]]:
    """Run `work(*args, **kwargs)` in a thread: (its result, {}) when it succeeds,
    (None, the coded error) when it raises."""
    try:
        return await asyncio.to_thread(work, *args, **kwargs), {}
    except BackpropError as err:
        return None, error_view(err)
    except Exception as exc:  # noqa: BLE001 - the UI task's outer edge: shown as RUNTIME_UNEXPECTED
        return None, unexpected_error(exc)
