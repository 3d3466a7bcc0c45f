"""A fair asyncio rate limiter for a remote image service: a token bucket of images plus a request rate.

The image bucket holds up to ``burst`` images and refills at ``images_per_minute / 60`` per second; it starts full,
so a perfect limiter lets ``burst`` images through at once and then one every ``60 / images_per_minute`` seconds,
which is the fastest a server enforcing the same bucket accepts. Requests are spaced at least
``1 / requests_per_second`` apart (``request_burst`` lets a few go together). ``skew`` keeps that many seconds' worth
of images in reserve, for a server that counts our requests a little later than we do.

Waiters are served strictly first come, first served: a caller asking for four images blocks the callers behind it
until its four are available, so a task's fan-out cannot be overtaken forever by single images. ``refused`` is how a
caller reports that the server answered "too many" (429, with or without ``Retry-After``): either everyone waits and
the refused request queues and pays again, or only the refused request waits and then goes first (``priority``).

The clock and the sleep function are injectable so tests can run simulated time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

_EPSILON = 1e-9  # float slack: a bucket at 0.9999999999 after sleeping the exact wait counts as full enough


class RateLimiter:
    """Token bucket of images (``images_per_minute``, ``burst``) and of requests (``requests_per_second``); FIFO."""

    def __init__(
        self,
        *,
        images_per_minute: float | None = None,
        burst: int | None = None,
        requests_per_second: float | None = None,
        request_burst: int = 1,
        skew: float = 0.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if images_per_minute is not None and images_per_minute <= 0:
            raise ValueError("images_per_minute must be positive (or None for no limit)")
        if burst is not None and burst < 1:
            raise ValueError("burst must be at least 1")
        if requests_per_second is not None and requests_per_second <= 0:
            raise ValueError("requests_per_second must be positive (or None for no limit)")
        if request_burst < 1:
            raise ValueError("request_burst must be at least 1")
        if skew < 0:
            raise ValueError("skew must not be negative")
        self._clock = clock
        self._sleep = sleep
        self._image_rate = images_per_minute / 60.0 if images_per_minute is not None else None
        self._image_capacity = float(burst if burst is not None else 1) if self._image_rate is not None else None
        self._request_rate = requests_per_second
        self._request_capacity = float(request_burst) if requests_per_second is not None else None
        # Images held back so a server that sees our requests up to ``skew`` seconds late (network, its queue, its
        # bucket full meanwhile) still has one for each: costs ``skew`` seconds once, nothing per image after.
        self._reserve = 0.0
        if self._image_rate is not None and self._image_capacity is not None:
            self._reserve = min(skew * self._image_rate, self._image_capacity - 1.0)
        self._image_tokens = self._image_capacity or 0.0
        self._request_tokens = self._request_capacity or 0.0
        self._updated = clock()
        self._paused_until = float("-inf")
        self._turn = asyncio.Lock()  # FIFO: asyncio.Lock wakes its waiters in arrival order

    @property
    def images_per_minute(self) -> float | None:
        return self._image_rate * 60.0 if self._image_rate is not None else None

    @property
    def burst(self) -> int | None:
        return int(self._image_capacity) if self._image_capacity is not None else None

    @property
    def requests_per_second(self) -> float | None:
        return self._request_rate

    @property
    def max_images(self) -> int | None:
        """The most images one ``acquire`` may ask for (the burst); None when images are not limited."""
        return self.burst

    def available_images(self) -> float | None:
        """Images that could start now (ignoring a pause); None when images are not limited. For tests and metrics."""
        self._refill(self._clock())
        return self._image_tokens if self._image_capacity is not None else None

    async def acquire(self, images: int = 1, *, priority: bool = False) -> None:
        """Wait for one request slot and ``images`` images (0 for a request that makes none, e.g. listing models).

        ``priority`` skips the queue (still honouring a pause and the request rate): for the retry of a request the
        server refused with 429, whose images were already taken. Queued behind the caller that takes the next image,
        it would always reach the server just after that one had used the image up, and be refused again.
        """
        if images < 0:
            raise ValueError("images must not be negative")
        if self._image_capacity is not None and images > self._image_capacity:
            raise ValueError(f"cannot take {images} images at once: the burst is {self.burst}")
        if priority:
            await self._take(images)
            return
        async with self._turn:
            await self._take(images)

    async def _take(self, images: int) -> None:
        while True:
            now = self._clock()
            self._refill(now)
            wait = self._wait(images, now)
            if wait <= 0:
                if self._image_capacity is not None:
                    self._image_tokens -= images
                if self._request_capacity is not None:
                    self._request_tokens -= 1.0
                return
            await self._sleep(wait)

    def refused(self, retry_after: float | None, wait: float) -> bool:
        """The server answered 429 (with ``retry_after``, or none). True: every caller waits ``wait`` seconds and
        the refused request pays for its images again and queues; False: only the refused request waits (the caller
        sleeps ``wait``), then goes first without paying.

        A wait of at least one image interval (or none given) says the service counts images we did not (another
        client on the same token, a stricter limit): everyone would be refused, so everyone waits, and the retry
        pays again like any request, which brings our bucket down towards the service's. A shorter wait is the
        request rate, or our bucket running a little ahead of the service's (network jitter between our clock and
        its): the images the call took still stand for it, our bucket is trimmed by what the service still lacked
        (one image per interval of the wait), and nobody else is held up.
        """
        rate = self._image_rate
        if retry_after is None or rate is None or retry_after >= 1.0 / rate:
            self.penalize(wait)
            return True
        self.penalize(0.0, images=retry_after * rate)
        return False

    def penalize(self, retry_after: float, *, images: float = 0.0) -> None:
        """The server said "too many, retry after ``retry_after`` seconds": nobody starts a request before then.

        ``images``: also take that many images (fractions allowed, even below zero): the server's image budget is
        that far behind ours, so ours is brought down to match it.
        """
        now = self._clock()
        if retry_after > 0:
            self._paused_until = max(self._paused_until, now + retry_after)
        if images > 0 and self._image_capacity is not None:
            self._refill(now)
            self._image_tokens -= images

    def _refill(self, now: float) -> None:
        elapsed = now - self._updated
        if elapsed <= 0:
            return
        self._updated = now
        if self._image_capacity is not None and self._image_rate is not None:
            self._image_tokens = min(self._image_capacity, self._image_tokens + elapsed * self._image_rate)
        if self._request_capacity is not None and self._request_rate is not None:
            self._request_tokens = min(self._request_capacity, self._request_tokens + elapsed * self._request_rate)

    def _wait(self, images: int, now: float) -> float:
        """Seconds until the head of the queue may go (0 or less: now)."""
        wait = self._paused_until - now
        if self._image_rate is not None and images > 0:
            missing = images + self._reserve - self._image_tokens
            if missing > _EPSILON:
                wait = max(wait, missing / self._image_rate)
        if self._request_rate is not None:
            missing = 1.0 - self._request_tokens
            if missing > _EPSILON:
                wait = max(wait, missing / self._request_rate)
        return wait
