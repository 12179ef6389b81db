# `make up` runs the hive; `make test` runs every check. Both install what they
# need first, idempotently: Debian packages, then Python packages into .venv.

VENV    := .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYPROJECTS := pyproject.toml web/pyproject.toml $(wildcard plugins/*/pyproject.toml)

# command=package pairs: a package is installed when its command is missing.
SYSTEM_PACKAGES := git=git node=nodejs npm=npm bwrap=bubblewrap dbus-daemon=dbus chromium=chromium nix-instantiate=nix-bin

# The Claude Code CLI, pinned; installed into the tree from npm (it ships a native binary).
CLAUDE_CODE_VERSION := 2.1.330
CLAUDE_PREFIX := .tools/claude
CLAUDE_STAMP  := $(CLAUDE_PREFIX)/.installed-$(CLAUDE_CODE_VERSION)

.PHONY: up test lint install system-packages clean

up: install
	$(VENV)/bin/hyperhive up

test: install lint
	$(PYTHON) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

install: system-packages $(STAMP) $(CLAUDE_STAMP)

system-packages:
	@scripts/ensure-system-packages $(SYSTEM_PACKAGES)
	@python3 -c 'import ensurepip, venv' 2>/dev/null || scripts/ensure-system-packages no-such-command=python3-venv

$(STAMP): requirements-dev.txt $(PYPROJECTS)
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(CLAUDE_STAMP):
	rm -rf $(CLAUDE_PREFIX) && mkdir -p $(CLAUDE_PREFIX)
	npm install --prefix $(CLAUDE_PREFIX) --no-audit --no-fund --loglevel=error @anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION)
	$(CLAUDE_PREFIX)/node_modules/.bin/claude --version
	touch $@

clean:
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache
