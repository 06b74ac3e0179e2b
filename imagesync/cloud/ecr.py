"""Amazon ECR: registry passwords from ``GetAuthorizationToken``, refreshed before expiry.

An auth entry with any ``aws_*`` field gets its password here. ECR tokens are valid for
12 hours; one is fetched on first use and again :data:`REFRESH_BEFORE` seconds before
its ``expiresAt`` (or once after the registry refuses it), so a run may last for days.

Two ways to call the API:

* static keys (``aws_access_key_id`` + ``aws_secret_access_key`` in the entry, else
  ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` in the environment): one SigV4-signed
  POST made here, no extra dependency;
* anything else (``aws_profile``, SSO, instance/container roles, web identity, ...):
  boto3's default credential chain, from the optional extra ``imagesync[aws]``.
  Re-implementing that chain would be large and wrong in subtle ways; signing one
  request with known keys is small and is checked against botocore's signer in tests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import re
import ssl
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from ..errors import AuthError, TransientError
from ..keychain import AuthEntry, Credential, SecretSink

if TYPE_CHECKING:
    from ..transport import Client

#: ``<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]``
ECR_HOST_RE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\."
    r"(?:amazonaws\.com(?:\.cn)?|on\.aws)$"
)
TARGET = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"
#: Fetch a new token this long before the current one expires (at most a quarter of
#: its lifetime).
REFRESH_BEFORE = 1800.0
#: A token whose expiresAt is already past (clock skew, mocks) is still reused this long,
#: so a bad clock cannot turn into a storm of API calls.
MIN_REUSE = 60.0


def parse_ecr_host(host: str) -> tuple[str, str] | None:
    """``123456789012.dkr.ecr.eu-west-1.amazonaws.com`` -> (account, region)."""
    m = ECR_HOST_RE.match(host.split(":", 1)[0].lower())
    return (m.group("account"), m.group("region")) if m else None


def api_endpoint(region: str) -> str:
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://api.ecr.{region}.{suffix}"


def refresh_deadline(expires_at: float, now_wall: float, now_mono: float) -> float:
    """Monotonic time at which to fetch a new token that expires at ``expires_at`` (epoch)."""
    lifetime = expires_at - now_wall
    if lifetime <= 0:
        return now_mono + MIN_REUSE
    return now_mono + lifetime - min(REFRESH_BEFORE, lifetime / 4)


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sigv4_headers(method: str, url: str, headers: Mapping[str, str], body: bytes, *,
                  region: str, service: str, access_key: str, secret_key: str,
                  session_token: str | None = None,
                  now: dt.datetime | None = None) -> dict[str, str]:
    """AWS Signature Version 4: ``headers`` plus host, x-amz-date and authorization."""
    now = now or dt.datetime.now(dt.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    parts = urlsplit(url)
    out = {k.lower(): str(v).strip() for k, v in headers.items()}
    out["host"] = parts.netloc
    out["x-amz-date"] = amz_date
    if session_token:
        out["x-amz-security-token"] = session_token
    signed = sorted(out)
    query = "&".join(sorted(
        f"{quote(unquote(k), safe='-_.~')}={quote(unquote(v), safe='-_.~')}"
        for k, _, v in (p.partition("=") for p in parts.query.split("&") if p)))
    canonical = "\n".join([
        method.upper(), quote(parts.path or "/", safe="/-_.~"), query,
        "".join(f"{k}:{' '.join(out[k].split())}\n" for k in signed),
        ";".join(signed), hashlib.sha256(body).hexdigest(),
    ])
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret_key}".encode(), date), region), service),
                "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                            f"SignedHeaders={';'.join(signed)}, Signature={signature}")
    return out


class ECRProvider:
    """Fetches ``AWS:<password>`` for one auth entry; ``fetch`` is called when due."""

    def __init__(self, entry: AuthEntry, registry: str, environ: Mapping[str, str],
                 on_secret: SecretSink, *, http: Callable[[], Client | None],
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.entry = entry
        self.http = http  # the HTTP client the API is called through
        self.registry = registry
        self.environ = environ
        self.on_secret = on_secret
        self.clock, self.wall = clock, wall
        self.calls = 0

    # -- settings ------------------------------------------------------------------------
    def region(self) -> str:
        parsed = parse_ecr_host(self.registry)
        region = (self.entry.aws_region or (parsed[1] if parsed else None)
                  or self.environ.get("AWS_REGION") or self.environ.get("AWS_DEFAULT_REGION"))
        if not region:
            raise AuthError(f"{self.entry.where}: set aws_region (the registry name does not "
                            "say which AWS region it is in)")
        return region

    def endpoint_url(self, region: str) -> str:
        return (self.entry.aws_endpoint_url or self.environ.get("AWS_ENDPOINT_URL_ECR")
                or self.environ.get("AWS_ENDPOINT_URL") or api_endpoint(region))

    def static_keys(self) -> tuple[str, str, str | None, str] | None:
        e = self.entry
        if e.aws_access_key_id and e.aws_secret_access_key:
            return (e.aws_access_key_id, e.aws_secret_access_key, e.aws_session_token,
                    "access key from the auth entry")
        env = self.environ
        if not e.aws_profile and env.get("AWS_ACCESS_KEY_ID") and env.get(
                "AWS_SECRET_ACCESS_KEY"):
            return (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                    env.get("AWS_SESSION_TOKEN"), "access key from AWS_ACCESS_KEY_ID")
        return None

    # -- fetching ------------------------------------------------------------------------
    async def fetch(self) -> Credential:
        region = self.region()
        endpoint = self.endpoint_url(region)
        keys = self.static_keys()
        self.calls += 1
        if keys is not None:
            access, secret, session, how = keys
            self.on_secret(secret)
            if session:
                self.on_secret(session)
            token, expires = await self._signed_call(endpoint, region, access, secret, session)
        else:
            how = (f"AWS profile {self.entry.aws_profile!r}" if self.entry.aws_profile
                   else "the default AWS credential chain")
            token, expires = await asyncio.to_thread(self._boto3_call, region, endpoint)
        self.on_secret(token)
        try:
            user, sep, password = base64.b64decode(token).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user, sep, password = "", "", ""
        if not sep or not password:
            raise AuthError("ECR GetAuthorizationToken answered with a malformed token")
        self.on_secret(password)
        return Credential(
            user, password,
            source=f"ECR GetAuthorizationToken ({how}, region {region}) for {self.entry.where}",
            expires_at=refresh_deadline(expires, self.wall(), self.clock()))

    async def _signed_call(self, endpoint: str, region: str, access: str, secret: str,
                           session: str | None) -> tuple[str, float]:
        url = endpoint.rstrip("/") + "/"
        body = b"{}"
        headers = sigv4_headers(
            "POST", url, {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": TARGET},
            body, region=region, service="ecr", access_key=access, secret_key=secret,
            session_token=session)
        headers.pop("host")  # the HTTP client sets the same value
        ctx: ssl.SSLContext | bool = True
        bundle = self.environ.get("AWS_CA_BUNDLE")
        if bundle and url.startswith("https://"):
            ctx = await asyncio.to_thread(ssl.create_default_context, cafile=bundle)
        client = self.http()
        if client is None:
            raise AuthError("ECR GetAuthorizationToken needs the session's HTTP client")
        # One attempt: the registry request that needs this credential is what is retried.
        status, _, raw = await client.send_once("POST", url, data=body, headers=headers, ssl=ctx)
        try:
            answer: Any = json.loads(raw) if raw else {}
        except ValueError:
            answer = {}
        if status != 200:
            kind = str(answer.get("__type") or status).rsplit("#", 1)[-1]
            msg = answer.get("message") or answer.get("Message") or ""
            err = f"ECR GetAuthorizationToken failed: {kind} {msg}".strip()
            if status >= 500 or "Throttl" in kind:
                raise TransientError(err)
            raise AuthError(err, status=status)
        return _token_of(answer)

    def _boto3_call(self, region: str, endpoint: str) -> tuple[str, float]:
        try:
            import boto3
            import botocore.exceptions as bx
        except ImportError:
            raise AuthError(
                f"{self.entry.where}: aws_profile and the default AWS credential chain need "
                "boto3: pip install 'imagesync[aws]' (or give aws_access_key_id and "
                "aws_secret_access_key)") from None
        explicit = endpoint if endpoint != api_endpoint(region) else None
        try:
            session = boto3.session.Session(profile_name=self.entry.aws_profile,
                                            region_name=region)
            answer = session.client("ecr", endpoint_url=explicit).get_authorization_token()
        except (bx.EndpointConnectionError, bx.ConnectTimeoutError,
                bx.ReadTimeoutError) as e:
            raise TransientError(f"ECR GetAuthorizationToken: {e}") from None
        except (bx.BotoCoreError, bx.ClientError) as e:
            raise AuthError(f"ECR GetAuthorizationToken failed: {e}") from None
        data = answer["authorizationData"][0]
        expires = data.get("expiresAt")
        when = expires.timestamp() if isinstance(expires, dt.datetime) else float(expires or 0)
        return data["authorizationToken"], when


def _token_of(answer: Any) -> tuple[str, float]:
    try:
        data = answer["authorizationData"][0]
        token = data["authorizationToken"]
        expires = float(data.get("expiresAt") or 0)
    except (KeyError, IndexError, TypeError, ValueError):
        raise AuthError("ECR GetAuthorizationToken answered without authorizationData") from None
    return token, expires
