# Quickstart: `make demo` (install into .venv, run the main job on the embedded default)
#             `make test` (install with the test extra, run the whole suite, build the docs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# These two releases are served from this machine's disk; a looser pin downloads gigabytes.
TORCH  := torch==2.14.1 torchvision==0.29.1
DEMO   := runs/demo

.PHONY: install install-test demo test test-fast docs clean sshd browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	touch $@

# NNI's PPO strategy needs gym 0.26.2 and tianshou 0.4.11; tianshou pins an old protobuf that
# nothing else here wants, so both come without their pins and the rl extra brings the rest.
RL     := gym==0.26.2 tianshou==0.4.11

$(VENV)/.installed: setup.py $(VENV)/.torch
	$(BIN)/pip install --quiet $(TORCH) -e '.[rl,export]'
	$(BIN)/pip install --quiet --no-deps $(RL)
	touch $@

$(VENV)/.installed-test: setup.py $(VENV)/.installed
	$(BIN)/pip install --quiet $(TORCH) -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# The main job on the embedded default: a search on digits (300M budget, 6 random trials,
# zero-cost + amateur + downstream), its results, and the best backbone exported for timm. The demo keeps
# the amateur stage at 40 steps (the default, 120, is chosen for real images: docs/benchmarks.md).
demo: install
	rm -rf $(DEMO)
	$(BIN)/metanet search --out $(DEMO)/search --set amateur.max_steps=40
	$(BIN)/metanet results $(DEMO)/search --top 3
	$(BIN)/metanet export $(DEMO)/search --out $(DEMO)/best --format torchscript,onnx
	$(BIN)/metanet flops $(DEMO)/best/arch.json --count

# The remote training-service test runs two OpenSSH servers on 127.0.0.1: install the server from the
# distribution's packages when it is missing and we are root (elsewhere the test says why it skips).
SSHD   := /usr/sbin/sshd

sshd:
	@[ -x $(SSHD) ] || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server >/dev/null))

# The web UI test drives NNI's UI in Debian's headless Chromium (Selenium): installed the same way.
browser:
	@command -v chromedriver >/dev/null || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null))

# Both cores: pytest-xdist runs two workers (each with one torch thread, tests/conftest.py), tests grouped by
# module so a module's shared fixtures are built once (`--dist loadfile`).
test: install-test sshd browser
	$(BIN)/python -m pytest -n 2 --dist loadfile
	$(BIN)/mkdocs build --strict --quiet

# The edit loop: every test not marked slow (each under 2 s), in about a minute and a half.
test-fast: install-test
	$(BIN)/python -m pytest -n 2 -m "not slow" -q

docs: install-test
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) runs .pytest_cache build
