# The imagesync image: a CI-plugin step (Drone / Harness / Woodpecker) or a plain CLI.
#   buildah bud --isolation chroot --storage-driver vfs -t imagesync .   (or docker build)
# BASE: a Debian-like image with python3 >= 3.10, its venv module and useradd
#   (make test-image builds on a Debian root made by mmdebstrap).
# PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST: install from this package index
#   instead of PyPI (empty: pip's default).
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_TRUSTED_HOST=""

COPY pyproject.toml README.md /tmp/imagesync-src/
COPY imagesync /tmp/imagesync-src/imagesync

# A venv (Debian's python refuses system-wide pip installs, PEP 668); pip itself is
# removed once imagesync is in, and an unset index argument means pip's default.
# The optional build secret pip_cert is a CA bundle for an index behind a TLS-inspecting
# proxy (buildah bud / docker build --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt);
# as a secret it is mounted for this step only and never stored in the image.
RUN --mount=type=secret,id=pip_cert,required=false \
    set -eu; \
    for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST; do \
        eval "[ -n \"\${$v}\" ] || unset $v"; \
    done; \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    python3 -m venv /opt/imagesync; \
    /opt/imagesync/bin/pip install --no-cache-dir --disable-pip-version-check -q \
        /tmp/imagesync-src; \
    /opt/imagesync/bin/pip uninstall -y -q pip setuptools 2>/dev/null || true; \
    rm -rf /tmp/imagesync-src /root/.cache; \
    useradd --system --uid 10001 --user-group --create-home --home-dir /home/imagesync \
        --shell /usr/sbin/nologin imagesync

ENV PATH=/opt/imagesync/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/imagesync
# No arguments + PLUGIN_SOURCE / PLUGIN_DESTINATION: plugin mode. Otherwise pass the usual
# arguments, e.g. --config /work/sync.yaml.
ENTRYPOINT ["imagesync"]
