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

.PHONY: up test lint typecheck install system-packages constraints clean

up: install
	$(VENV)/bin/hyperhive up

test: install lint typecheck
	$(PYTHON) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Which files and how strictly: [tool.mypy] in pyproject.toml.
typecheck: install
	$(VENV)/bin/mypy

install: system-packages $(STAMP) $(CLAUDE_STAMP)

system-packages:
	@scripts/ensure-system-packages $(SYSTEM_PACKAGES)
	@python3 -c 'import ensurepip, venv' 2>/dev/null || scripts/ensure-system-packages no-such-command=python3-venv

# constraints.txt pins every package to the version the tests last passed with.
# setuptools announces each editable install of a flat layout (a package beside
# pyproject.toml) with an information-only warning; the layout is deliberate.
$(STAMP): requirements-dev.txt constraints.txt $(PYPROJECTS)
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(PYTHON) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	touch $@

# After a green `make test`: pin what it passed with (docs/operations.md). Local
# packages (this tree's, editable) are not pinned.
constraints:
	{ echo "# The versions the tests passed with; refresh with \`make constraints\` (docs/operations.md)."; \
	  $(PYTHON) -m pip freeze --exclude-editable | grep -v ' @ file:'; } > constraints.txt

$(CLAUDE_STAMP):
	rm -rf $(CLAUDE_PREFIX) && mkdir -p $(CLAUDE_PREFIX)
	npm install --prefix $(CLAUDE_PREFIX) --no-audit --no-fund --loglevel=error @anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION)
	$(CLAUDE_PREFIX)/node_modules/.bin/claude --version
	touch $@

clean:
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache .mypy_cache
