"""``hyperhive install-service``: the hardened unit and sample config, outside NixOS."""

from __future__ import annotations

import grp
import json
import shutil
import stat
import subprocess
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from hyperhive_core.cli import cli
from hyperhive_core.service import HARDENING, ServicePlan, hardening_json, render_unit

REPO = Path(__file__).resolve().parent.parent
# A group every Debian system has, to stand in for hive-admin.
EXISTING_GROUP = "daemon"


@pytest.fixture
def install(clean_env, tmp_path):
    """Run ``hyperhive install-service`` with paths inside ``tmp_path``; return the result."""

    def run(*args: str, state: bool = True) -> subprocess.CompletedProcess[str]:
        paths = ["--unit-path", str(tmp_path / "hyperhive.service")]
        paths += ["--config-path", str(tmp_path / "etc" / "hyperhive.toml")]
        if state:
            paths += ["--state-dir", str(tmp_path / "state")]
        result = CliRunner().invoke(cli, ["install-service", *paths, *args])
        return subprocess.CompletedProcess(paths, result.exit_code, result.stdout, result.stderr)

    return run


def unit_settings(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_the_nix_module_reads_the_same_hardening():
    shared = json.loads((REPO / "nix" / "hardening.json").read_text())
    assert shared == HARDENING, (
        "nix/hardening.json differs from hyperhive_core.service.HARDENING; regenerate it: .venv/bin/python -c "
        "'from hyperhive_core.service import hardening_json; print(hardening_json(), end=\"\")' > nix/hardening.json"
    )
    assert (REPO / "nix" / "hardening.json").read_text() == hardening_json()


def test_install_service_writes_a_hardened_unit_and_a_sample_config(install, tmp_path):
    result = install("--admin-group", EXISTING_GROUP)
    assert result.returncode == 0, result.stderr
    unit = unit_settings((tmp_path / "hyperhive.service").read_text())
    config_path = tmp_path / "etc" / "hyperhive.toml"
    assert unit["ExecStart"].endswith(f"/hyperhive --config {config_path} up")
    assert unit["ReadWritePaths"] == str(tmp_path / "state")
    assert unit["ProtectSystem"] == "strict"
    assert unit["ProtectHome"] in ("yes", "read-only")
    assert unit["PrivateTmp"] == unit["NoNewPrivileges"] == "yes"
    assert unit["User"] == "root"
    assert "CAP_SETUID" in unit["CapabilityBoundingSet"]
    assert "CAP_SYS_ADMIN" not in unit["CapabilityBoundingSet"]
    # The sample is `hyperhive init`'s, with what the unit depends on filled in.
    config = config_path.read_text()
    assert config.startswith("# hyperhive configuration.")
    assert "# [agents.NAME]" in config
    assert tomllib.loads(config)["hive"] == {
        "state_dir": str(tmp_path / "state"),
        "container_backend": "bwrap",
        "admin_group": EXISTING_GROUP,
    }
    # The daemon cannot create its state dir under ProtectSystem=strict, so it is made
    # now: the admin group may pass through it to the host socket.
    state = (tmp_path / "state").stat()
    assert stat.S_IMODE(state.st_mode) == 0o710
    assert state.st_gid == grp.getgrnam(EXISTING_GROUP).gr_gid
    assert "systemctl enable --now hyperhive" in result.stdout


def test_the_hyperhive_command_has_install_service(clean_env, tmp_path, hyperhive):
    unit = tmp_path / "hyperhive.service"
    paths = ["--unit-path", str(unit), "--config-path", str(tmp_path / "hyperhive.toml")]
    result = subprocess.run(
        [hyperhive, "install-service", *paths, "--state-dir", str(tmp_path / "state"), "--dry-run"],
        env=clean_env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"# {unit}\n# Written by `hyperhive install-service`")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("backend", sorted(HARDENING["backends"]))
def test_the_unit_passes_systemd_analyze_verify(install, tmp_path, backend):
    assert install("--backend", backend).returncode == 0
    unit = tmp_path / "hyperhive.service"
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    # verify exits 0 on unknown keys and bad values too, and only warns: any word about our unit fails.
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if unit.name in line]
    assert result.returncode == 0, result.stderr
    assert complaints == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_catches_a_bad_setting(install, tmp_path):
    """The check above can fail: a setting systemd cannot parse is reported."""
    assert install().returncode == 0
    unit = tmp_path / "hyperhive.service"
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=very"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert "protect system value" in result.stderr


def test_the_process_backend_runs_as_a_dedicated_user_without_capabilities(install, tmp_path):
    result = install("--backend", "process", "--admin-group", "hive-admin")
    assert result.returncode == 0, result.stderr
    unit = unit_settings((tmp_path / "hyperhive.service").read_text())
    assert unit["User"] == unit["Group"] == "hyperhive"
    assert unit["CapabilityBoundingSet"] == ""
    assert unit["SupplementaryGroups"] == "hive-admin"  # to give it the host socket
    assert "useradd --system --user-group --groups hive-admin" in result.stdout


def test_an_existing_unit_is_kept_without_force(install, tmp_path):
    assert install().returncode == 0
    unit = tmp_path / "hyperhive.service"
    unit.write_text("# mine\n")
    refused = install()
    assert refused.returncode != 0
    assert f"{unit} already exists; pass --force to overwrite it" in refused.stderr
    assert unit.read_text() == "# mine\n"
    assert install("--force").returncode == 0
    assert "ProtectSystem=strict" in unit.read_text()


def test_an_existing_config_is_kept_and_followed(install, tmp_path):
    config = tmp_path / "etc" / "hyperhive.toml"
    config.parent.mkdir()
    config.write_text(f'[hive]\nstate_dir = "{tmp_path / "kept-state"}"\ncontainer_backend = "process"\n')
    result = install(state=False)
    assert result.returncode == 0, result.stderr
    assert f"kept {config}" in result.stdout
    assert config.read_text().startswith("[hive]\nstate_dir")
    unit = unit_settings((tmp_path / "hyperhive.service").read_text())
    assert unit["ReadWritePaths"] == str(tmp_path / "kept-state")
    assert unit["User"] == "hyperhive"
    assert "SupplementaryGroups" not in unit  # the config names no admin group


def test_an_option_contradicting_the_existing_config_is_refused(install, tmp_path):
    config = tmp_path / "etc" / "hyperhive.toml"
    config.parent.mkdir()
    config.write_text('[hive]\ncontainer_backend = "process"\nstate_dir = "/srv/hive"\n')
    result = install("--backend", "bwrap", state=False)
    assert result.returncode != 0
    assert (
        f'{config} has [hive] container_backend = "process", but the option asks for "bwrap"; '
        "the unit follows the existing config: edit it, or drop the option"
    ) in result.stderr
    assert not (tmp_path / "hyperhive.service").exists()


def test_a_dedicated_user_needs_a_state_dir_in_the_config(install, tmp_path):
    config = tmp_path / "etc" / "hyperhive.toml"
    config.parent.mkdir()
    config.write_text('[hive]\ncontainer_backend = "process"\n')
    result = install(state=False)
    assert result.returncode != 0
    assert "leaves [hive] state_dir unset" in result.stderr
    assert 'set state_dir = "/var/lib/hyperhive" in [hive]' in result.stderr


def test_a_backend_without_a_profile_is_refused(install, tmp_path):
    config = tmp_path / "etc" / "hyperhive.toml"
    config.parent.mkdir()
    config.write_text('[hive]\ncontainer_backend = "firecracker"\n')
    result = install(state=False)
    assert result.returncode != 0
    assert "no service profile for container backend 'firecracker'; install-service knows bwrap, nspawn, process" in (
        result.stderr
    )


def test_a_broken_existing_config_is_reported(install, tmp_path):
    config = tmp_path / "etc" / "hyperhive.toml"
    config.parent.mkdir()
    config.write_text("[hive]\nstate_dirr = 1\n")
    result = install(state=False)
    assert result.returncode != 0
    assert "unknown key hive.state_dirr" in result.stderr


@pytest.mark.parametrize("state_dir", ["/home/alice/hive", "/root/hive"])
def test_a_state_dir_in_a_home_directory_is_refused(install, state_dir):
    result = install("--state-dir", state_dir, state=False)
    assert result.returncode != 0
    assert f"the state dir is at {state_dir}, under /{state_dir.split('/')[1]}" in result.stderr
    assert "choose one outside home directories, like /var/lib/hyperhive" in result.stderr


def test_a_path_a_unit_cannot_hold_plainly_is_refused(install, tmp_path):
    result = install("--state-dir", str(tmp_path / "my hive"), state=False)
    assert result.returncode != 0
    assert "choose a path of letters, digits and / . _ + @ : -" in result.stderr


def test_dry_run_prints_and_writes_nothing(install, tmp_path):
    for flag in ("--dry-run", "--stdout"):
        result = install(flag)
        assert result.returncode == 0, result.stderr
        assert f"# {tmp_path / 'hyperhive.service'}\n" in result.stdout
        assert "ProtectSystem=strict" in result.stdout
        assert "# hyperhive configuration." in result.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_a_home_directory_install_gets_read_only_homes():
    """Running hyperhive from a home directory is possible, with homes read-only, not hidden."""
    plan = ServicePlan(
        Path("/opt/hyperhive/bin/hyperhive"), Path("/etc/hyperhive/hyperhive.toml"), Path("/srv/hive"), "", "bwrap"
    )
    assert "ProtectHome=yes" in render_unit(plan)
    text = render_unit(replace(plan, visible_home=Path("/home/alice/venv/bin/hyperhive")))
    assert "ProtectHome=read-only\n" in text
    assert "# ProtectHome=read-only rather than yes: hyperhive runs from /home/alice/venv/bin/hyperhive." in text
