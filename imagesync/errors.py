"""The errors imagesync raises, grouped by what the caller should do with them."""

from __future__ import annotations


class ImagesyncError(Exception):
    """Base class: every message is safe to print (no secrets, no traceback needed)."""


class ConfigError(ImagesyncError):
    """Unusable configuration or arguments: exit code 2, one line."""

    def __init__(self, file: str | None, key: str | None, message: str):
        self.file, self.key, self.message = file, key, message
        super().__init__(message)

    def __str__(self) -> str:
        where = ": ".join(p for p in (self.file, self.key) if p)
        return f"{where}: {self.message}" if where else self.message


class TransientError(ImagesyncError):
    """Worth retrying: connection trouble, 5xx, 429. ``retry_after`` in seconds if given."""

    def __init__(self, message: str, retry_after: float | None = None, *,
                 unreachable: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        # No answer at all (cannot connect, stalled): counts towards marking the
        # registry down, unlike an answer that says "later" (5xx, 429).
        self.unreachable = unreachable


class RegistryError(ImagesyncError):
    """A definite answer from a registry that retrying cannot change (4xx)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


class AuthError(RegistryError):
    """Credentials refused or missing, naming the registry and the credential source."""


class NotFoundError(RegistryError):
    """Manifest, blob or repository does not exist."""


class IntegrityError(ImagesyncError):
    """Bytes that do not match their descriptor's digest or size: never retried blindly."""


class RegistryDown(RegistryError):
    """A registry that stayed unreachable through every retry: marked down for the run,
    so its remaining requests fail at once with this reason instead of retrying again."""


class Interrupted(ImagesyncError):
    """The run was stopped (Ctrl-C, SIGTERM) before this image finished."""
