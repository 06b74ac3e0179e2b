"""Cloud keychains: registry passwords minted by a cloud's API (ECR, Google ADC).

They depend on :mod:`imagesync.keychain` (and call their APIs through the HTTP client);
the keychain knows nothing of them: the composition root plugs them in.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ..keychain import AuthEntry, CredentialFetch, ProviderFactory, SecretSink

if TYPE_CHECKING:
    from ..transport import Client


def cloud_providers(environ: Mapping[str, str] | None, on_secret: SecretSink,
                    http: Callable[[], Client | None],
                    clock: Callable[[], float] = time.monotonic) -> list[ProviderFactory]:
    env = os.environ if environ is None else environ

    def ecr(entry: AuthEntry, registry: str) -> CredentialFetch | None:
        if not entry.uses_ecr:
            return None
        from .ecr import ECRProvider

        return ECRProvider(entry, registry, env, on_secret, http=http, clock=clock).fetch

    def gcp(entry: AuthEntry, registry: str) -> CredentialFetch | None:
        if not entry.gcp_adc:
            return None
        from .gcp import GCPProvider

        return GCPProvider(entry, on_secret, http=http, clock=clock).fetch

    return [ecr, gcp]
