"""nix/: every file parses, the module's options are the config's keys, its unit is
install-service's, and the agent template agrees with what the nspawn backend generates.

Nix evaluates here without nixpkgs: the module gets a small stand-in ``lib`` and
``pkgs`` (below) that keep the parts these tests read, and a dummy store.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hyperhive_core.boot import config_schemas
from hyperhive_core.broker import BrokerSection
from hyperhive_core.brokers import JetStreamSection
from hyperhive_core.config import load_config, render_default_config
from hyperhive_core.containers import ContainerSpec
from hyperhive_core.containers.nspawn import (
    NIXOS_CONTAINERS_ETC,
    NIXOS_PACKAGES,
    SECRET_NAME,
    SESSION_ONLY,
    AgentProfile,
    container_mounts,
    render_agent_nix,
)
from hyperhive_core.plugins import make_plugin_manager
from hyperhive_core.service import HARDENING, ServicePlan, service_settings

REPO = Path(__file__).resolve().parent.parent
NIX = REPO / "nix"
# Options of the module that are not hyperhive.toml keys.
MODULE_ONLY = {("enable",), ("package",), ("settings",), ("nats", "enable"), ("nats", "routes")}
# Options named for what they mean on a NixOS host rather than after their key.
RENAMED = {
    ("cluster", "enable"): ("broker", "backend"),
    ("cluster", "natsUrls"): ("jetstream", "urls"),
    ("cluster", "credentialsFile"): ("jetstream", "credentials_file"),
    ("cluster", "tls", "ca"): ("jetstream", "tls_ca"),
    ("cluster", "tls", "cert"): ("jetstream", "tls_cert"),
    ("cluster", "tls", "key"): ("jetstream", "tls_key"),
}
# Top-level options are [hive] keys, a group of options is a section, `agents` a table of entries.
TABLES = {"agents"}
# The dashboard is the web plugin.
SECTIONS = {"dashboard": "web"}

pytestmark = pytest.mark.skipif(
    shutil.which("nix-instantiate") is None,
    reason="nix-instantiate is missing; `make test` installs it (Debian package nix-bin)",
)

# Enough of nixpkgs' lib for module.nix: options are marked, mkIf/mkMerge/mkDefault
# take effect at once (the module is evaluated enabled).
STUB = """
let
  lib = {
    mkOption = attrs: attrs // { _option = true; };
    mkEnableOption = what: { _option = true; type = "bool"; default = false; };
    types = {
      bool = "bool"; str = "str"; int = "int"; package = "package";
      nullOr = t: { nullOr = t; }; listOf = t: { listOf = t; }; attrsOf = t: { attrsOf = t; };
      submodule = m: { submodule = m; };
    };
    mkIf = cond: value: if cond then value else { };
    mkMerge = builtins.foldl' (a: b: a // b) { };
    mkDefault = value: value;
    optionals = cond: list: if cond then list else [ ];
    optionalAttrs = cond: attrs: if cond then attrs else { };
    hasAttrByPath = path: attrs: builtins.length path == 0
      || (attrs ? ${builtins.head path} && lib.hasAttrByPath (builtins.tail path) attrs.${builtins.head path});
    concatStringsSep = builtins.concatStringsSep;
    attrNames = builtins.attrNames;
    importJSON = path: builtins.fromJSON (builtins.readFile path);
  };
  pkgs = {
    formats.toml = _: { type = "toml"; generate = name: value: "/nix/store/hash-${name}"; };
    git = "git"; bubblewrap = "bubblewrap"; util-linux = "util-linux"; nixos-container = "nixos-container";
    path = "/nix/store/hash-nixpkgs";
  };
  # The module as the flake exposes it.
  flake = (import FLAKE).outputs { self = flake; };
  module = cfg: flake.nixosModules.default {
    inherit lib pkgs;
    config = { services.hyperhive = cfg; systemd.package = "systemd"; nix.package = "nix"; };
  };
in
"""


def nix_eval(expression: str) -> Any:
    result = subprocess.run(
        ["nix-instantiate", "--store", "dummy://", "--eval", "--strict", "--json", "-E", expression],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def with_stub(expression: str) -> Any:
    return nix_eval(STUB.replace("FLAKE", str(NIX / "flake.nix")) + expression)


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def module_options() -> list[tuple[str, ...]]:
    """Every option path under services.hyperhive; ``<name>`` stands for a table's entries."""
    walk = """
      names = prefix: attrs: builtins.concatMap (name:
        let value = attrs.${name}; path = prefix ++ [ name ]; in
        if value ? _option then [ path ] ++ entries path value.type else names path value
      ) (builtins.attrNames attrs);
      entries = path: type:
        if builtins.isAttrs type && type ? attrsOf && builtins.isAttrs type.attrsOf && type.attrsOf ? submodule
        then names (path ++ [ "<name>" ]) type.attrsOf.submodule.options
        else [ ];
    """
    expression = f"let {walk} in names [ ] (module {{ }}).options.services.hyperhive"
    return [tuple(path) for path in with_stub(expression)]


def config_key(option: tuple[str, ...]) -> tuple[str, ...]:
    """The hyperhive.toml key an option is named after: ``stateDir`` is [hive] state_dir,
    ``dashboard.bind`` is [web] bind, ``agents`` is [agents.NAME] and
    ``agents.<name>.model`` its key model."""
    if option in RENAMED:
        return RENAMED[option]
    if len(option) == 1 and option[0] not in TABLES:
        return ("hive", snake(option[0]))
    if option[0] in TABLES:  # the table itself, then its entries' keys
        return (option[0], "NAME", *(snake(part) for part in option[2:]))
    return (SECTIONS.get(option[0], option[0]), *(snake(part) for part in option[1:]))


def init_keys() -> set[tuple[str, ...]]:
    """Every key `hyperhive init` writes, as (section, key) or (table, "NAME", key)."""
    keys = set()
    section: tuple[str, ...] = ()
    for line in render_default_config(config_schemas(make_plugin_manager(None))).splitlines():
        header = re.fullmatch(r"(?:# )?\[([a-z_.A-Z]+)\]", line)
        if header:
            section = tuple(header.group(1).split("."))
            keys.add(section)
            continue
        key = re.fullmatch(r"# ([a-z_]+) =.*", line)
        if key and section:
            keys.add((*section, key.group(1)))
    return keys


def registered_sections() -> set[str]:
    return set(config_schemas(make_plugin_manager(None)))


def nix_files() -> list[Path]:
    ignored = {".venv", ".tools", "node_modules", ".git"}
    return sorted(path for path in REPO.rglob("*.nix") if not ignored & set(path.relative_to(REPO).parts))


# -- parsing -----------------------------------------------------------------------------


def test_every_nix_file_parses():
    files = nix_files()
    assert {path.name for path in files} >= {"flake.nix", "module.nix", "agent.nix", "settings.nix"}
    for path in files:
        result = subprocess.run(["nix-instantiate", "--parse", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{path}: {result.stderr}"


def test_a_broken_nix_file_fails_the_parse_check(tmp_path):
    broken = tmp_path / "broken.nix"
    broken.write_text("{ services.hyperhive.enable = true }\n")
    result = subprocess.run(["nix-instantiate", "--parse", str(broken)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "syntax error" in result.stderr


def test_the_flake_exposes_the_module_and_the_agent_template():
    outputs = with_stub(
        """{
          modules = builtins.attrNames flake.nixosModules;
          lib = builtins.attrNames flake.lib;
          container = (flake.lib.agentContainer { name = "a"; role = "agent"; model = "haiku"; mcpConfig = { }; })
            .privateUsers;
        }"""
    )
    assert outputs == {"modules": ["default", "hyperhive"], "lib": ["agentContainer"], "container": "pick"}


# -- options and config keys ---------------------------------------------------------------


def test_the_module_has_the_issues_options():
    options = set(module_options())
    expected = {"enable", "package", "stateDir", "plugins", "adminGroup", "agents", "settings"}
    assert {option for option in options if len(option) == 1} == {(name,) for name in expected}
    assert ("dashboard", "bind") in options


def test_module_options_are_the_keys_hyperhive_init_writes():
    """Every option (but enable, package, settings) is named after a key of `hyperhive init`'s config."""
    keys = init_keys()
    pending = set()
    for option in set(module_options()) - MODULE_ONLY:
        key = config_key(option)
        if key[0] not in registered_sections():
            pending.add(key[0])
            continue
        assert key in keys, f"services.hyperhive.{'.'.join(option)} names {key}, which `hyperhive init` does not write"
    # Only the dashboard's section may be missing: hyperhive-web is a plugin, installed or not.
    assert pending <= {"web"}


def test_dashboard_bind_is_a_config_key():
    if "web" not in registered_sections():
        pytest.skip("hyperhive-web is not installed: no [web] section to check dashboard.bind against")
    assert ("web", "bind") in init_keys()


def full_cfg() -> dict[str, Any]:
    """A module config with every typed option set, and some freeform settings."""
    return {
        "enable": True,
        "package": "/nix/store/hash-hyperhive",
        "stateDir": "/srv/hive",
        "dashboard": {"bind": "0.0.0.0"},
        "plugins": ["nap"],
        "adminGroup": "operators",
        "containers": {"memoryMaxMb": 4096, "memoryHighMb": 3072, "pidsMax": 1024, "cpuWeight": 200},
        "agents": {
            "scout": {
                "model": "sonnet",
                "instructions": "Watch the build.",
                "allowedRecipients": ["builder"],
                "allowlist": {"bash": ["git *"]},
            }
        },
        "cluster": {
            "enable": True,
            "host": "alpha",
            "natsUrls": ["tls://alpha:4222", "tls://beta:4222", "tls://gamma:4222"],
            "credentialsFile": "/run/keys/hive.creds",
            "tls": {"ca": "/etc/nats/ca.pem", "cert": "/run/keys/client.pem", "key": "/run/keys/client.key"},
        },
        "nats": {"enable": True, "routes": ["nats-route://beta:6222", "nats-route://gamma:6222"]},
        "settings": {"hive": {"manager": "boss", "container_backend": "bwrap"}, "claude": {"model": "opus"}},
    }


ALONE = {"cluster": {"enable": False, "host": None, "natsUrls": [], "tls": {}}, "nats": {"enable": False, "routes": []}}
"""A module config's cluster options left at their defaults: one host, sqlite."""


def test_the_written_config_uses_exactly_the_options_keys(tmp_path):
    cfg = full_cfg()
    written = nix_eval(f"import {NIX / 'settings.nix'} (builtins.fromJSON ''{json.dumps(cfg)}'')")
    typed = {tuple(key) for key in written["typedKeys"]}
    named = {config_key(option)[:2] for option in set(module_options()) - MODULE_ONLY}
    assert typed == {key if key[0] not in TABLES else ("agents", "scout") for key in named}
    toml = written["toml"]
    assert toml["hive"] == {
        "state_dir": "/srv/hive",
        "plugins": ["nap"],
        "admin_group": "operators",
        "manager": "boss",
        "container_backend": "bwrap",
    }
    assert toml["agents"]["scout"] == {
        "model": "sonnet",
        "instructions": "Watch the build.",
        "allowed_recipients": ["builder"],
        "allowlist": {"bash": ["git *"]},
    }
    assert toml["claude"] == {"model": "opus"}
    assert toml["broker"] == {"backend": "jetstream"}
    assert toml["jetstream"] == {
        "urls": ["tls://alpha:4222", "tls://beta:4222", "tls://gamma:4222"],
        "credentials_file": "/run/keys/hive.creds",
        "tls_ca": "/etc/nats/ca.pem",
        "tls_cert": "/run/keys/client.pem",
        "tls_key": "/run/keys/client.key",
    }
    assert toml["cluster"] == {"host": "alpha"}
    assert toml["containers"] == {"memory_max_mb": 4096, "memory_high_mb": 3072, "pids_max": 1024, "cpu_weight": 200}
    # The daemon accepts what the module writes.
    schemas = config_schemas(make_plugin_manager(None))
    assert toml["web"] == {"bind": "0.0.0.0"}
    if "web" not in schemas:
        del toml["web"]
    config = load_config(tmp_path / "hyperhive.toml", toml, schemas)
    assert config.hive.state_dir == Path("/srv/hive")
    assert config.section("agents")["scout"].allowed_recipients == ["builder"]
    assert config.section("broker", BrokerSection).backend == "jetstream"
    jetstream = config.section("jetstream", JetStreamSection)
    assert (jetstream.urls[0], jetstream.tls_key) == ("tls://alpha:4222", Path("/run/keys/client.key"))


def test_the_cluster_options_run_a_nats_node_and_need_each_other():
    config = with_stub(f"(module (builtins.fromJSON ''{json.dumps(full_cfg())}'')).config")
    assert config["services"]["nats"] == {
        "enable": True,
        "jetstream": True,
        "serverName": "alpha",
        "settings": {
            "jetstream": {"sync_interval": "always"},
            "cluster": {
                "name": "hyperhive",
                "listen": "0.0.0.0:6222",
                "routes": ["nats-route://beta:6222", "nats-route://gamma:6222"],
            },
        },
    }
    assert config["systemd"]["services"]["hyperhive"]["after"] == ["network-online.target", "nats.service"]

    alone = with_stub(f"(module (builtins.fromJSON ''{json.dumps(full_cfg() | ALONE)}'')).config")
    assert alone["services"]["nats"] == {}
    assert alone["systemd"]["services"]["hyperhive"]["after"] == ["network-online.target"]

    cfg = full_cfg() | ALONE
    cfg["cluster"] = ALONE["cluster"] | {"host": "alpha"}
    failed = with_stub(
        f"builtins.filter (a: !a.assertion) (module (builtins.fromJSON ''{json.dumps(cfg)}'')).config.assertions"
    )
    assert [item["message"] for item in failed] == [
        "services.hyperhive.cluster.host needs services.hyperhive.cluster.enable: "
        "the hosts of a hive share its messages on NATS."
    ]


def test_options_left_unset_write_no_keys():
    unset = {"memoryMaxMb": None, "memoryHighMb": None, "pidsMax": None, "cpuWeight": None}
    cfg = full_cfg() | ALONE | {"dashboard": {"bind": None}, "plugins": None, "agents": {}, "settings": {}}
    cfg["containers"] = unset
    written = nix_eval(f"(import {NIX / 'settings.nix'} (builtins.fromJSON ''{json.dumps(cfg)}'')).toml")
    assert written == {"hive": {"state_dir": "/srv/hive", "admin_group": "operators"}}


def test_settings_may_not_set_what_a_typed_option_sets():
    cfg = full_cfg()
    cfg["settings"]["hive"]["state_dir"] = "/elsewhere"
    failed = with_stub(
        f"builtins.filter (a: !a.assertion) (module (builtins.fromJSON ''{json.dumps(cfg)}'')).config.assertions"
    )
    assert [item["message"] for item in failed] == [
        "services.hyperhive.settings.hive.state_dir is set by a typed option of services.hyperhive; "
        "set it there instead."
    ]


def test_a_backend_without_a_service_profile_is_an_evaluation_error():
    cfg = full_cfg()
    cfg["settings"]["hive"]["container_backend"] = "firecracker"
    failed = with_stub(
        f"builtins.filter (a: !a.assertion) (module (builtins.fromJSON ''{json.dumps(cfg)}'')).config.assertions"
    )
    assert [item["message"] for item in failed] == [
        "services.hyperhive: container backend firecracker has no service profile; "
        "set settings.hive.container_backend to one of bwrap, nspawn, process."
    ]


# -- the unit ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", sorted(HARDENING["backends"]))
def test_the_nixos_unit_has_install_services_settings(backend):
    cfg = full_cfg()
    cfg["settings"]["hive"]["container_backend"] = backend
    service = with_stub(
        f"(module (builtins.fromJSON ''{json.dumps(cfg)}'')).config.systemd.services.hyperhive.serviceConfig"
    )
    plan = ServicePlan(
        Path("/opt/hyperhive/bin/hyperhive"),
        Path("/etc/hyperhive/hyperhive.toml"),
        Path("/srv/hive"),
        "operators",
        backend,
    )
    expected = service_settings(plan)
    assert (
        service.pop("ExecStart") == "/nix/store/hash-hyperhive/bin/hyperhive --config /etc/hyperhive/hyperhive.toml up"
    )
    assert expected.pop("ExecStart") == "/opt/hyperhive/bin/hyperhive --config /etc/hyperhive/hyperhive.toml up"
    if expected.get("SupplementaryGroups"):
        expected["SupplementaryGroups"] = [expected["SupplementaryGroups"]]
    if backend == "nspawn":  # nixos-container writes outside the state dir
        extra = service["ReadWritePaths"][1:]
        assert str(NIXOS_CONTAINERS_ETC) in extra  # where the backend writes each container's settings
        service["ReadWritePaths"] = service["ReadWritePaths"][:1]
    assert service == expected
    assert service["ReadWritePaths"] == ["/srv/hive"]
    for setting in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert service[setting] in ("strict", True)


def test_the_state_dir_lets_the_admin_group_reach_the_host_socket():
    rules = with_stub(f"(module (builtins.fromJSON ''{json.dumps(full_cfg())}'')).config.systemd.tmpfiles.rules")
    assert rules == ["d /srv/hive 0710 root operators - -"]


def test_the_process_backend_runs_as_a_dedicated_user():
    cfg = full_cfg()
    cfg["settings"]["hive"]["container_backend"] = "process"
    config = with_stub(f"(module (builtins.fromJSON ''{json.dumps(cfg)}'')).config")
    assert config["users"]["users"] == {"hyperhive": {"isSystemUser": True, "group": "hyperhive", "home": "/srv/hive"}}
    assert config["systemd"]["services"]["hyperhive"]["serviceConfig"]["User"] == "hyperhive"
    assert config["systemd"]["tmpfiles"]["rules"] == ["d /srv/hive 0710 hyperhive operators - -"]


# -- the agent template and the nspawn backend ---------------------------------------------


def test_the_generated_agent_nix_agrees_with_the_template(tmp_path):
    root = tmp_path / "state"
    spec = ContainerSpec(
        agent="scout",
        role="manager",
        state_dir=root / "agents" / "scout" / "state",
        socket_dir=root / "run" / "scout",
        extra_binds={"/agents/builder/config": root / "agents" / "builder" / "config"},
    )
    env = {
        "HOME": "/state",
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "DISABLE_TELEMETRY": "1",
        "ANTHROPIC_API_KEY": "sk-secret",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9/",
    }
    mcp = {"mcpServers": {"hyperhive": {"command": "hyperhive", "args": ["relay", "/run/hyperhive/agent.sock"]}}}
    profile = AgentProfile(model="sonnet", env=env, mcp_config=mcp)
    # A read-only path that holds the state root, so it is hidden too.
    mounts = container_mounts(spec, [Path("/opt/hyperhive"), tmp_path], root, tmp_path / "empty_home")
    generated = tmp_path / "agent.nix"
    generated.write_text(render_agent_nix(spec, profile, mounts))
    arguments = {
        "name": spec.agent,
        "role": spec.role,
        "model": profile.model,
        "mcpConfig": mcp,
        # The backend keeps secrets and per-exec variables out of the Nix store.
        "env": {key: value for key, value in env.items() if key not in SESSION_ONLY and not SECRET_NAME.search(key)},
        "binds": {inside: str(source) for inside, source in mounts.binds.items()},
        "readOnly": [str(path) for path in mounts.read_only],
        "hidden": [str(path) for path in mounts.hidden],
        "readOnlyAt": {inside: str(source) for inside, source in mounts.read_only_at.items()},
    }
    arguments_file = tmp_path / "arguments.json"
    arguments_file.write_text(json.dumps(arguments))
    both = nix_eval(
        f"""
        let
          pkgs = builtins.listToAttrs (map (name: {{ inherit name; value = "pkgs." + name; }})
            (builtins.fromJSON ''{json.dumps(list(NIXOS_PACKAGES))}''));
          withConfig = container: container // {{ config = container.config {{ inherit pkgs; }}; }};
        in {{
          generated = withConfig (import {generated});
          template = withConfig (import {NIX / "agent.nix"} (builtins.fromJSON (builtins.readFile {arguments_file})));
        }}
        """
    )
    for container in both.values():  # the same JSON, spaced differently
        for name, file in container["config"]["environment"]["etc"].items():
            container["config"]["environment"]["etc"][name] = json.loads(file["text"])
    assert both["generated"] == both["template"]
    template = both["template"]
    assert template["privateUsers"] == "pick"
    assert template["bindMounts"]["/home/agent"] == {"hostPath": str(tmp_path / "empty_home"), "isReadOnly": True}
    assert template["tmpfs"] == [str(root)]
    assert template["config"]["environment"]["systemPackages"] == [f"pkgs.{name}" for name in NIXOS_PACKAGES]
    assert template["config"]["environment"]["etc"]["hyperhive/agent.json"] == {
        "agent": "scout",
        "role": "manager",
        "model": "sonnet",
    }
    assert "ANTHROPIC_API_KEY" not in template["config"]["environment"]["variables"]
