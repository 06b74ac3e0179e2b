"""Google Artifact Registry / Container Registry via Application Default Credentials.

Without this module, GCP registries already work with basic credentials, as with
``docker login``: ``username: oauth2accesstoken`` + ``password: <access token>``, or
``username: _json_key`` + ``password_file: key.json`` (a service-account key).

``gcp_adc: true`` instead asks google-auth (optional extra ``imagesync[gcp]``) for an
access token from Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``,
gcloud's user credentials, or the metadata server) and refreshes it before it expires.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import AuthError, TransientError
from ..keychain import AuthEntry, Credential, SecretSink

if TYPE_CHECKING:
    from ..transport import Client

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
#: Fetch a new access token this long before the current one expires (Google's live 1 h).
REFRESH_BEFORE = 300.0
USERNAME = "oauth2accesstoken"


class _ClientRequest:
    """google-auth's transport interface (``Request``), carried out by imagesync's HTTP
    client on the event loop: google-auth refreshes in a worker thread and waits there,
    while the request shares the session, timeouts and error classification of every
    other request."""

    class Response:
        def __init__(self, status: int, headers: Any, data: bytes):
            self.status, self.headers, self.data = status, dict(headers), data

    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop):
        self.client, self.loop = client, loop

    def __call__(self, url: str, method: str = "GET", body: Any = None,
                 headers: Any = None, timeout: Any = None, **kwargs: Any) -> Any:
        future = asyncio.run_coroutine_threadsafe(
            self.client.send_once(method, url, data=body, headers=dict(headers or {})),
            self.loop)
        try:
            status, hdrs, data = future.result()
        except TransientError as e:
            import google.auth.exceptions

            raise google.auth.exceptions.TransportError(str(e)) from None
        return self.Response(status, hdrs, data)


class GCPProvider:
    def __init__(self, entry: AuthEntry, on_secret: SecretSink, *,
                 http: Callable[[], Client | None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.entry = entry
        self.http = http  # the HTTP client token requests go through
        self.on_secret = on_secret
        self.clock, self.wall = clock, wall
        self._creds: Any = None
        self.calls = 0

    async def fetch(self) -> Credential:
        self.calls += 1
        client = self.http()
        request = (_ClientRequest(client, asyncio.get_running_loop())
                   if client is not None else None)
        token, expiry = await asyncio.to_thread(self._refresh, request)
        self.on_secret(token)
        lifetime = (expiry - self.wall()) if expiry else 3600.0
        refresh_in = max(lifetime - min(REFRESH_BEFORE, lifetime / 4), 10.0)
        return Credential(USERNAME, token,
                          source=f"Google Application Default Credentials for {self.entry.where}",
                          expires_at=self.clock() + refresh_in)

    def _refresh(self, request: Any = None) -> tuple[str, float | None]:
        try:
            import google.auth
            import google.auth.exceptions
            import google.auth.transport.requests
        except ImportError:
            raise AuthError(f"{self.entry.where}: gcp_adc needs google-auth: "
                            "pip install 'imagesync[gcp]'") from None
        try:
            if self._creds is None:
                self._creds, _project = google.auth.default(scopes=list(SCOPES))
            self._creds.refresh(request or google.auth.transport.requests.Request())
        except google.auth.exceptions.TransportError as e:
            raise TransientError(f"Google Application Default Credentials: {e}") from None
        except google.auth.exceptions.GoogleAuthError as e:
            raise AuthError(f"Google Application Default Credentials: {e}") from None
        token = self._creds.token
        if not token:
            raise AuthError("Google Application Default Credentials gave no access token")
        expiry = self._creds.expiry  # naive UTC datetime, or None
        when = expiry.replace(tzinfo=dt.timezone.utc).timestamp() if expiry else None
        return token, when
