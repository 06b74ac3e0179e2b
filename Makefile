# Everything installs itself: a venv in .venv, and Debian's docker-registry and
# skopeo through apt-get when they are missing (CI runs as root on Debian).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test bench lint deps clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

deps:
	@missing=""; \
	command -v docker-registry >/dev/null || missing="$$missing docker-registry"; \
	command -v skopeo >/dev/null || missing="$$missing skopeo"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v htpasswd >/dev/null || missing="$$missing apache2-utils"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing with apt-get"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: $(STAMP) deps
	$(BIN)/python -m examples.demo

test: $(STAMP) deps
	$(BIN)/ruff check imagesync tests benchmarks examples
	$(BIN)/mypy imagesync
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP) deps
	$(BIN)/python -m benchmarks.run

lint: $(STAMP)
	$(BIN)/ruff check imagesync tests benchmarks examples
	$(BIN)/mypy imagesync

clean:
	rm -rf $(VENV) .demo .bench

# The container image, built daemonless on a Debian base made by mmdebstrap, pushed with
# buildah and copied with imagesync between loopback registries, then run as a CI-plugin
# step (see docs/plugin.md). Not part of `make test`: a first run takes ~2 minutes.
.PHONY: test-image
test-image: $(STAMP) deps
	@missing=""; \
	command -v buildah >/dev/null || missing="$$missing buildah"; \
	command -v mmdebstrap >/dev/null || missing="$$missing mmdebstrap"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing with apt-get"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	IMAGESYNC_TEST_IMAGE=1 $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/image
