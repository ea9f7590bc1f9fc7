"""Waiting for state that no event announces, with a generous bound (never a timed assertion:
the bound only keeps a broken run from hanging)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(condition: Callable[[], bool], what: str = "", timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds; TimeoutError naming ``what`` if it never does."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():  # noqa: ASYNC110 (plain state: nothing to await)
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise TimeoutError(f"gave up after {timeout} s waiting for {what or condition}") from None
