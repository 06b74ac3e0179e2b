"""Fixtures: real loopback registries (CNCF distribution), a token issuer and skopeo.

A missing ``docker-registry`` or ``skopeo`` makes the dependent tests fail loudly — a
silently skipped integration suite is worse than a red one.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.certs import CertAuthority
from tests.support.images import RegistryAPI
from tests.support.registry import (
    INSTALL_HINT,
    LocalRegistry,
    RegistryFactory,
    find_registry_binary,
    start_registry,
)
from tests.support.tokenserver import TEST_USER, TokenIssuer, TokenIssuerFactory


@pytest.fixture(scope="session")
def registry_binary() -> str:
    """Path of docker-registry; fails (never skips) when it is not installed."""
    path = find_registry_binary()
    if path is None:
        pytest.fail(f"docker-registry not found on PATH: {INSTALL_HINT}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def skopeo() -> str:
    path = shutil.which("skopeo")
    if path is None:
        pytest.fail("skopeo not found on PATH: run `make test`, which installs skopeo",
                    pytrace=False)
    return path


@pytest.fixture
def registry_factory(registry_binary: str, tmp_path: Path) -> Iterator[RegistryFactory]:
    """``registry_factory(tls=..., htpasswd=(u, p), token=issuer, name=..., ca=...)``."""
    started: list[LocalRegistry] = []

    def factory(**kwargs: Any) -> LocalRegistry:
        reg = start_registry(tmp_path / "registries", **kwargs)
        started.append(reg)
        return reg

    yield factory
    for reg in started:
        reg.stop()


@pytest.fixture
def src_registry(registry_factory: RegistryFactory) -> LocalRegistry:
    return registry_factory(name="src")


@pytest.fixture
def dst_registry(registry_factory: RegistryFactory) -> LocalRegistry:
    return registry_factory(name="dst")


@pytest.fixture
def src_api(src_registry: LocalRegistry) -> RegistryAPI:
    """Seeding/inspection client for ``src_registry``."""
    return RegistryAPI(src_registry)


@pytest.fixture
def dst_api(dst_registry: LocalRegistry) -> RegistryAPI:
    return RegistryAPI(dst_registry)


@pytest.fixture
def test_ca(tmp_path: Path) -> CertAuthority:
    """One CA for several TLS registries: ``registry_factory(ca=test_ca)``."""
    return CertAuthority.create(tmp_path / "ca")


@pytest.fixture
def token_issuer_factory(tmp_path: Path) -> Iterator[TokenIssuerFactory]:
    """``token_issuer_factory(ttl=2, users={...}, policy=...)`` -> started TokenIssuer."""
    started: list[TokenIssuer] = []

    def factory(**kwargs: Any) -> TokenIssuer:
        kwargs.setdefault("users", dict([TEST_USER]))
        issuer = TokenIssuer(tmp_path / f"token-{len(started)}", **kwargs)
        issuer.start()
        started.append(issuer)
        return issuer

    yield factory
    for issuer in started:
        issuer.stop()


@pytest.fixture
def token_issuer(token_issuer_factory: TokenIssuerFactory) -> TokenIssuer:
    """Started issuer accepting ``TEST_USER``; anonymous callers may only pull."""
    return token_issuer_factory()


@pytest.fixture
def token_registry(registry_factory: RegistryFactory, token_issuer: TokenIssuer) -> LocalRegistry:
    """Plain-HTTP registry delegating auth to ``token_issuer``."""
    return registry_factory(token=token_issuer, name="token")


@pytest.fixture(autouse=True)
def _isolated_docker_config(tmp_path_factory: pytest.TempPathFactory,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """imagesync falls back to Docker's config.json: never read the developer's own."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path_factory.mktemp("docker-config")))
