# One hyperhive agent's NixOS container: the value of `containers.<name>`.
#
# The nspawn backend generates this shape for every agent it runs on NixOS
# (hyperhive_core/containers/nspawn.py, render_agent_nix), with the arguments
# below; tests/test_nix.py evaluates both and checks they agree. The defaults
# here are the backend's.
{
  # The agent's name and role ("manager" or "agent").
  name,
  role,
  # Its Claude model, e.g. "haiku".
  model,
  # Claude Code's --mcp-config: the hive's MCP server, reached through the agent's socket.
  mcpConfig,
  # Environment of its Claude Code process. Never secrets: the Nix store is world-readable.
  env ? { },
  # nixpkgs attribute paths, e.g. "git" or "python3Packages.requests".
  packages ? [
    "bashInteractive"
    "coreutils"
    "git"
  ],
  # Container path -> host path, read-write: its /state and its socket's directory.
  binds ? { },
  # Host paths shown read-only at the same place (the hive's own programs).
  readOnly ? [ ],
  # Covered by an empty tmpfs: the state root, where a read-only path holds it.
  hidden ? [ ],
  # Container path -> host path, read-only: the agent's HOME, an empty directory.
  readOnlyAt ? { },
  # The size of the container's /tmp in MiB ([containers] tmp_size_mb); 0: nspawn's own.
  tmpSizeMb ? 0,
  # System calls the container's payload may not make (nspawn's --system-call-filter=~),
  # where its systemd can do without them; every exec loads the whole filter itself.
  deniedSyscalls ? [
    "perf_event_open"
    "userfaultfd"
    "kexec_load"
    "kexec_file_load"
    "init_module"
    "finit_module"
    "delete_module"
    "swapon"
    "swapoff"
    "acct"
    "settimeofday"
    "stime"
    "clock_settime"
    "clock_settime64"
    "ptrace"
    "process_vm_readv"
    "process_vm_writev"
    "open_by_handle_at"
    "io_uring_setup"
    "io_uring_enter"
    "io_uring_register"
  ],
  stateVersion ? "24.11",
}:
let
  attrPath =
    pkgs: path:
    builtins.foldl' (set: attr: set.${attr}) pkgs (builtins.filter builtins.isString (builtins.split "\\." path));
in
{
  # Container root is an unprivileged host uid range, never host root.
  privateUsers = "pick";
  extraFlags = [
    "--private-users-ownership=auto"
  ]
  ++ (if tmpSizeMb > 0 then [ "--tmpfs=/tmp:mode=1777,size=${toString tmpSizeMb}M" ] else [ ])
  ++ map (name: "--system-call-filter=~${name}") deniedSyscalls;
  # Loopback only, like every backend: the model API and the agent's egress are
  # reached through the daemon's proxy, model.sock in the bound socket directory.
  privateNetwork = true;
  tmpfs = hidden;
  bindMounts =
    builtins.mapAttrs (inside: source: {
      hostPath = source;
      isReadOnly = false;
    }) binds
    // builtins.listToAttrs (
      map (path: {
        name = path;
        value = {
          hostPath = path;
          isReadOnly = true;
        };
      }) readOnly
    )
    // builtins.mapAttrs (inside: source: {
      hostPath = source;
      isReadOnly = true;
    }) readOnlyAt;

  config =
    { pkgs, ... }:
    {
      boot.isContainer = true;
      system.stateVersion = stateVersion;
      environment.systemPackages = map (attrPath pkgs) packages;
      environment.variables = env;
      environment.etc."hyperhive/agent.json".text = builtins.toJSON {
        agent = name;
        inherit role model;
      };
      environment.etc."hyperhive/mcp.json".text = builtins.toJSON mcpConfig;
    };
}
