"""RateLimiter: burst then rate, request spacing, FIFO fairness, penalties, cancellation (simulated clock)."""

from __future__ import annotations

import asyncio
import time

import pytest

from text2image_hub.ratelimit import RateLimiter


class FakeClock:
    """Simulated time: ``sleep`` jumps the clock forward instead of waiting."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


def limiter(clock: FakeClock, **kwargs: float | int | None) -> RateLimiter:
    return RateLimiter(clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]


async def test_acquire_lets_burst_through_then_paces_at_rate() -> None:
    clock = FakeClock()
    bucket = limiter(clock, images_per_minute=10, burst=20)
    times = []
    for _ in range(30):
        await bucket.acquire()
        times.append(clock.now)
    assert times[:20] == [0.0] * 20
    assert times[20:] == pytest.approx([6.0 * k for k in range(1, 11)])


async def test_acquire_takes_several_images_at_once() -> None:
    clock = FakeClock()
    bucket = limiter(clock, images_per_minute=60, burst=4)
    await bucket.acquire(4)
    assert clock.now == 0.0
    await bucket.acquire(3)
    assert clock.now == pytest.approx(3.0)


async def test_acquire_spaces_requests_at_requests_per_second() -> None:
    clock = FakeClock()
    bucket = limiter(clock, requests_per_second=5)
    times = []
    for _ in range(6):
        await bucket.acquire()
        times.append(clock.now)
    assert times == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])


async def test_acquire_zero_images_needs_only_a_request_slot() -> None:
    clock = FakeClock()
    bucket = limiter(clock, images_per_minute=1, burst=1, requests_per_second=10)
    await bucket.acquire(1)
    await bucket.acquire(0)
    assert clock.now == pytest.approx(0.1)


async def test_acquire_without_limits_never_waits() -> None:
    clock = FakeClock()
    bucket = limiter(clock)
    for _ in range(100):
        await bucket.acquire(7)
    assert clock.now == 0.0
    assert bucket.available_images() is None


async def test_acquire_serves_waiters_first_come_first_served() -> None:
    clock = FakeClock()
    bucket = limiter(clock, images_per_minute=60, burst=4)
    await bucket.acquire(4)  # empty the bucket
    served: list[int] = []

    async def take(index: int, images: int) -> None:
        await bucket.acquire(images)
        served.append(index)

    sizes = [4, 1, 3, 1, 2, 1]
    tasks = [asyncio.create_task(take(index, images)) for index, images in enumerate(sizes)]
    await asyncio.gather(*tasks)
    assert served == list(range(len(sizes)))
    assert clock.now == pytest.approx(sum(sizes))  # one image per second, no idle time


async def test_acquire_more_than_burst_raises_value_error() -> None:
    bucket = limiter(FakeClock(), images_per_minute=10, burst=2)
    with pytest.raises(ValueError, match="burst is 2"):
        await bucket.acquire(3)


async def test_penalize_pauses_every_waiter() -> None:
    clock = FakeClock()
    bucket = limiter(clock, images_per_minute=10, burst=20)
    await bucket.acquire()
    bucket.penalize(5.0)
    await bucket.acquire()
    assert clock.now == pytest.approx(5.0)
    bucket.penalize(2.0)
    bucket.penalize(0.5)  # a shorter penalty does not shorten the pause
    await bucket.acquire()
    assert clock.now == pytest.approx(7.0)


async def test_penalize_while_head_waits_extends_its_wait() -> None:
    bucket = RateLimiter(images_per_minute=60 * 50, burst=1)  # real clock: one image every 20 ms
    await bucket.acquire()
    started = time.monotonic()
    waiter = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0.005)
    bucket.penalize(0.15)
    await waiter
    assert time.monotonic() - started >= 0.14


async def test_cancelled_waiter_leaves_the_queue() -> None:
    clock = FakeClock()
    bucket = limiter(clock, images_per_minute=60, burst=1)
    await bucket.acquire()
    gate = asyncio.Event()

    async def slow_sleep(seconds: float) -> None:
        await gate.wait()
        clock.now += seconds

    bucket._sleep = slow_sleep  # the head blocks until we open the gate
    first = asyncio.create_task(bucket.acquire())
    second = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    await asyncio.wait_for(second, timeout=1)
    assert clock.now == pytest.approx(1.0)  # the cancelled one took no image


async def test_acquire_real_clock_reaches_optimal_makespan() -> None:
    bucket = RateLimiter(images_per_minute=60 * 200, burst=10)  # 200 images/s after a burst of 10
    started = time.monotonic()
    await asyncio.gather(*(bucket.acquire() for _ in range(50)))
    elapsed = time.monotonic() - started
    optimum = (50 - 10) / 200
    assert optimum * 0.95 <= elapsed <= optimum * 1.25 + 0.01


async def test_acquire_with_skew_keeps_a_reserve_but_the_same_rate() -> None:
    clock = FakeClock()
    bucket = limiter(clock, images_per_minute=60, burst=5, skew=0.5)
    times = []
    for _ in range(7):
        await bucket.acquire()
        times.append(clock.now)
    assert times == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.5, 1.5, 2.5])


async def test_penalize_with_images_takes_them_from_the_bucket() -> None:
    clock = FakeClock()
    bucket = limiter(clock, images_per_minute=60, burst=2)
    await bucket.acquire()
    bucket.penalize(0.25, images=0.25)
    assert bucket.available_images() == pytest.approx(0.75)
    await bucket.acquire()
    assert clock.now == pytest.approx(0.25)
    await bucket.acquire()
    assert clock.now == pytest.approx(1.25)


async def test_acquire_priority_skips_the_queue() -> None:
    bucket = RateLimiter(images_per_minute=600, burst=1)  # real clock: the next image in 0.1 s
    await bucket.acquire()
    order: list[str] = []

    async def take(name: str, images: int, priority: bool) -> None:
        await bucket.acquire(images, priority=priority)
        order.append(name)

    queued = asyncio.create_task(take("queued", 1, False))
    await asyncio.sleep(0)
    retry = asyncio.create_task(take("retry", 0, True))
    await asyncio.gather(queued, retry)
    assert order == ["retry", "queued"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"images_per_minute": 0},
        {"images_per_minute": 10, "burst": 0},
        {"requests_per_second": -1},
        {"request_burst": 0},
        {"skew": -1},
    ],
)
def test_ratelimiter_rejects_invalid_limits(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        RateLimiter(**kwargs)  # type: ignore[arg-type]
