"""The one retry layer: which failures are worth another try, and how long to wait.

Nothing else in imagesync retries a request. Small requests are retried whole by
:meth:`imagesync.transport.Client.request`; uploads retry their own steps (a POST, one
PATCH chunk, the final PUT) with the same :class:`RetryPolicy`, and progress resets
their budget.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import ssl
import time
from dataclasses import dataclass

import aiohttp

from .errors import TransientError

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def is_transient(exc: BaseException) -> bool:
    """Worth another try: connection trouble, timeouts, 5xx, 408 and 429. A TLS failure
    (untrusted certificate, refused client certificate) is not: it will not heal."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return False
    return isinstance(
        exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError
        | asyncio.TimeoutError | ConnectionError)


def is_connection_failure(exc: BaseException) -> bool:
    """The registry could not be reached or did not answer at all (as opposed to an
    answer saying "later"): counts towards marking the registry down."""
    if isinstance(exc, TransientError):
        return exc.unreachable
    return is_transient(exc) and not isinstance(exc, aiohttp.ClientPayloadError)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` is seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class RetryPolicy:
    """How often and how patiently to retry. Tests shrink the waits and the timeout."""

    retries: int = 3
    initial: float = 0.5
    maximum: float = 30.0
    max_retry_after: float = 120.0
    #: Seconds without a byte from a registry before a request counts as stalled.
    timeout: float = 60.0
    connect_timeout: float = 20.0

    def delay(self, attempt: int, exc: BaseException | None = None) -> float:
        """Before retry number ``attempt`` (1, 2, ...): initial * 2^(attempt-1) plus up to
        ``initial`` of jitter, capped; never less than the server's ``Retry-After``."""
        backoff = min(self.initial * 2 ** (attempt - 1) + random.uniform(0, self.initial),
                      self.maximum)
        after = getattr(exc, "retry_after", None)
        if after is not None:
            return min(max(after, backoff), self.max_retry_after)
        return backoff


def describe(exc: BaseException) -> str:
    """A sentence for a network failure (never ``<RawResponseMessage(...)>``)."""
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return "no answer in time"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        if "RawResponseMessage" in str(exc):
            return "the connection closed in the middle of the response headers"
        return "the registry closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the response body was cut short"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    text = str(exc)
    if "RawResponseMessage" in text:
        return "the connection closed in the middle of the response"
    return text or type(exc).__name__
