"""Per-caller request limits and the result cache of /v1/images/generations.

Both live inside the app's ``ApiState`` and are used from the event loop only (no locks needed).

``CallerLimiter``: a token bucket per caller (a Nextcloud user or an API key) holding up to ``per_minute``
requests and refilling at ``per_minute / 60`` per second; an empty bucket is a ``RateLimitError`` whose
``retry_after`` says when one request will be allowed again. Unlike the remote backend's limiter it never waits.

``ResultCache``: the results of seeded requests, keyed by everything that changes the pixels, least recently used
evicted first, bounded by entry count and by PNG bytes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..admin import RuntimeConfig
from ..errors import RateLimitError
from ..service import GenerationResult, ImageRequest

# admin settings that cannot change a generated image (credentials, limits, waiting time, messages); the blocked
# terms stay in the key, so a cached answer was allowed by the policy in force
_CONFIG_NOT_IN_KEY = frozenset(
    {
        "language",
        "blocked_message",
        "api_keys",
        "api_rate_limit",
        "remote_api_key",
        "remote_images_per_minute",
        "remote_burst",
        "remote_deadline",
        "local_wait_limit",
    }
)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class CallerLimiter:
    """Token buckets by caller; ``check`` takes one request or raises ``RateLimitError``."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_callers: int = 10_000) -> None:
        self._clock = clock
        self._max_callers = max_callers
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def check(self, caller: str, per_minute: int) -> None:
        if per_minute <= 0:
            return
        now = self._clock()
        rate = per_minute / 60.0
        bucket = self._buckets.get(caller)
        if bucket is None:
            bucket = _Bucket(float(per_minute), now)
            self._buckets[caller] = bucket
            self._prune()
        else:
            self._buckets.move_to_end(caller)
            bucket.tokens = min(float(per_minute), bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / rate
            raise RateLimitError(
                f"API rate limit of {per_minute} requests per minute reached by {caller.partition(':')[0]}",
                retry_after=wait,
                user_message=f"Too many requests: this server allows {per_minute} image requests per minute per "
                f"user or API key. Try again in {max(1, round(wait))} s.",
            )
        bucket.tokens -= 1.0

    def _prune(self) -> None:
        while len(self._buckets) > self._max_callers:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


def cache_key(spec: ImageRequest, config: RuntimeConfig) -> str:
    """A digest of every input that changes the images: the spec and the admin settings that shape them."""
    parts = {
        "prompt": spec.prompt,
        "negative_prompt": spec.negative_prompt or "",
        "model": spec.model or "",
        "style": spec.style or "",
        "size": str(spec.size) if spec.size else "",
        "steps": spec.steps,
        "guidance_scale": spec.guidance_scale,
        "seeds": list(spec.seeds or ()),
        "count": spec.count,
        "watermark": spec.watermark,
        "config": config.model_dump(mode="json", exclude=set(_CONFIG_NOT_IN_KEY)),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class ResultCache:
    """LRU of generation results, at most ``max_entries`` entries and ``max_bytes`` bytes of PNG."""

    def __init__(self, *, max_entries: int = 256, max_bytes: int = 128 * 1024 * 1024) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, GenerationResult] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> GenerationResult | None:
        result = self._entries.get(key)
        if result is not None:
            self._entries.move_to_end(key)
        return result

    def put(self, key: str, result: GenerationResult) -> None:
        size = _size(result)
        if size > self._max_bytes or self._max_entries <= 0:
            return
        previous = self._entries.pop(key, None)
        if previous is not None:
            self._bytes -= _size(previous)
        self._entries[key] = result
        self._bytes += size
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= _size(evicted)

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)


def _size(result: GenerationResult) -> int:
    return sum(len(image.png) for image in result.images)
