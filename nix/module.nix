# services.hyperhive: the hive daemon as a hardened systemd service, its config
# written from these options. docs/operations.md walks through it.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;
  cfg = config.services.hyperhive;
  toml = pkgs.formats.toml { };
  generated = import ./settings.nix cfg;
  configFile = toml.generate "hyperhive.toml" generated.toml;
  configPath = "/etc/hyperhive/hyperhive.toml";

  # Shared with `hyperhive install-service` (hyperhive_core/service.py), so the two
  # units cannot drift: how to run the daemon, the hardening, and per container
  # backend who runs it with which capabilities.
  hardening = lib.importJSON ./hardening.json;
  backend = generated.toml.hive.container_backend;
  profile = hardening.backends.${backend} or { };
  user = profile.User or "root";
  nspawn = backend == "nspawn";
  # nixos-container writes outside the state dir: the containers' settings and
  # roots, their system profiles and gc roots, and its lock.
  containerPaths = [
    "/etc/nixos-containers"
    "/var/lib/nixos-containers"
    "/nix/var/nix/profiles/per-container"
    "/nix/var/nix/gcroots/per-container"
  ];
in
{
  options.services.hyperhive = {
    enable = lib.mkEnableOption "hyperhive, a swarm of Claude Code agents steered by an operator";

    package = mkOption {
      type = types.package;
      description = ''
        The hyperhive installation to run: a Python environment with the
        `hyperhive` distribution and the plugins to load, providing
        `bin/hyperhive`.
      '';
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/hyperhive";
      description = ''
        [hive] state_dir: the database, agents' state, config repos and sockets.
        The service may write here and nowhere else.
      '';
    };

    dashboard.bind = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "0.0.0.0";
      description = ''
        [web] bind: the address the dashboard listens on (its port is
        settings.web.port). Default: the dashboard plugin's, 127.0.0.1.
      '';
    };

    plugins = mkOption {
      type = types.nullOr (types.listOf types.str);
      default = null;
      example = [
        "web"
        "nap"
        "questions"
      ];
      description = "[hive] plugins: the plugins to load, by entry-point name. Default: every installed one.";
    };

    adminGroup = mkOption {
      type = types.str;
      default = "hive-admin";
      description = ''
        [hive] admin_group: members may use the host socket, and so the
        `hyperhive` CLI. The module creates the group; add operators to it.
      '';
    };

    # [containers]: every agent's resource caps; null keeps the daemon's default.
    # An agent's own caps go in its entry: agents.<name>.memory_max_mb, ...
    containers = {
      memoryMaxMb = mkOption {
        type = types.nullOr types.int;
        default = null;
        example = 4096;
        description = "[containers] memory_max_mb: each agent's hard memory cap in MiB; 0 is none. Default: 2048.";
      };
      memoryHighMb = mkOption {
        type = types.nullOr types.int;
        default = null;
        example = 3072;
        description = "[containers] memory_high_mb: each agent's soft memory cap in MiB; 0 is none. Default: 1536.";
      };
      pidsMax = mkOption {
        type = types.nullOr types.int;
        default = null;
        example = 1024;
        description = "[containers] pids_max: processes and threads per agent; 0 is none. Default: 512.";
      };
      cpuWeight = mkOption {
        type = types.nullOr types.int;
        default = null;
        example = 200;
        description = "[containers] cpu_weight: each agent's CPU share, 1 to 10000. Default: 100.";
      };
    };

    # A hive on a NATS JetStream cluster, and across hosts (docs/cluster.md).
    cluster = {
      enable = lib.mkEnableOption ''
        the JetStream broker: [broker] backend = "jetstream", its messages on
        the NATS cluster at natsUrls'';
      host = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "alpha";
        description = ''
          [cluster] host: this host's name in a hive that spans several hosts.
          Default: none, the hive runs on this host alone (its messages still on NATS).
        '';
      };
      natsUrls = mkOption {
        type = types.listOf types.str;
        default = [ "nats://127.0.0.1:4222" ];
        example = [
          "tls://alpha:4222"
          "tls://beta:4222"
          "tls://gamma:4222"
        ];
        description = ''
          [jetstream] urls: the NATS cluster's nodes, this host's own first; the
          daemon fails over to the others in this order.
        '';
      };
      credentialsFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/keys/hyperhive-nats.creds";
        description = ''
          [jetstream] credentials_file: user:password, an nkey seed (SU...) or a
          .creds file, mode 0600 and owned by the daemon's user. A path outside
          the Nix store, which anyone may read.
        '';
      };
      tls = {
        ca = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "[jetstream] tls_ca: the CA (PEM) that signed the NATS servers' certificates.";
        };
        cert = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "[jetstream] tls_cert: a client certificate (PEM), for servers that require one.";
        };
        key = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "[jetstream] tls_key: the client certificate's key (PEM), outside the Nix store.";
        };
      };
    };

    nats = {
      enable = lib.mkEnableOption ''
        a NATS node with JetStream on this host (NixOS's services.nats), one of
        the cluster at cluster.natsUrls; each write is fsynced before it is acknowledged'';
      routes = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [
          "nats-route://beta:6222"
          "nats-route://gamma:6222"
        ];
        description = "The other nodes' cluster addresses; none runs a cluster of one node (set [jetstream] replicas = 1).";
      };
    };

    agents = mkOption {
      type = types.attrsOf (
        types.submodule {
          freeformType = toml.type;
          options = {
            model = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "Model for this agent. Default: [claude] model.";
            };
            instructions = mkOption {
              type = types.str;
              default = "";
              description = "What this agent is for; added to its system prompt.";
            };
            allowedRecipients = mkOption {
              type = types.listOf types.str;
              default = [ ];
              description = "Agents it may message, besides the operator and the manager.";
            };
          };
        }
      );
      default = { };
      example = {
        scout = {
          model = "sonnet";
          instructions = "Watch the build and report failures.";
          allowlist.bash = [ "git *" ];
        };
      };
      description = "[agents.<name>]: agents declared in config. Plugin sections go in as sub-tables.";
    };

    settings = mkOption {
      type = toml.type;
      default = { };
      example = {
        claude.model = "sonnet";
        broker.retention_days = 30;
      };
      description = ''
        Every other hyperhive.toml key (docs/configuration.md), merged with the
        typed options above, which must not be set here as well.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions =
      map (key: {
        assertion = !(lib.hasAttrByPath key cfg.settings);
        message = "services.hyperhive.settings.${lib.concatStringsSep "." key} is set by a typed option of services.hyperhive; set it there instead.";
      }) generated.typedKeys
      ++ [
        {
          assertion = cfg.cluster.host == null || cfg.cluster.enable;
          message = "services.hyperhive.cluster.host needs services.hyperhive.cluster.enable: the hosts of a hive share its messages on NATS.";
        }
        {
          assertion = hardening.backends ? ${backend};
          message = "services.hyperhive: container backend ${backend} has no service profile; set settings.hive.container_backend to one of ${lib.concatStringsSep ", " (lib.attrNames hardening.backends)}.";
        }
      ];

    # On NixOS agents run in nixos-containers built from their agent.nix.
    services.hyperhive.settings.hive.container_backend = lib.mkDefault "nspawn";

    # A node of the hive's NATS cluster on this host, on the ports natsUrls and routes name.
    services.nats = lib.mkIf cfg.nats.enable {
      enable = true;
      jetstream = true;
      serverName = if cfg.cluster.host != null then cfg.cluster.host else config.networking.hostName;
      settings = {
        # Acknowledge a write only once it is on disk: a power cut loses nothing acknowledged.
        jetstream.sync_interval = "always";
      } // lib.optionalAttrs (cfg.nats.routes != [ ]) {
        cluster = {
          name = "hyperhive";
          listen = "0.0.0.0:6222";
          routes = cfg.nats.routes;
        };
      };
    };

    environment.etc."hyperhive/hyperhive.toml".source = configFile;
    environment.systemPackages = [ cfg.package ];
    # The CLI finds the daemon's config, and through it the host socket.
    environment.variables.HYPERHIVE_CONFIG = configPath;

    users.groups = lib.mkMerge [
      (lib.mkIf (cfg.adminGroup != "") { ${cfg.adminGroup} = { }; })
      (lib.mkIf (user != "root") { ${user} = { }; })
    ];
    users.users = lib.mkIf (user != "root") {
      ${user} = {
        isSystemUser = true;
        group = user;
        home = cfg.stateDir;
      };
    };

    # ProtectSystem=strict: systemd-tmpfiles makes what the service cannot.
    # The admin group may pass through the state dir to host.sock, never list it.
    systemd.tmpfiles.rules =
      [
        "d ${cfg.stateDir} ${if cfg.adminGroup != "" then "0710" else "0700"} ${user} ${
          if cfg.adminGroup != "" then cfg.adminGroup else "root"
        } - -"
      ]
      ++ lib.optionals nspawn (map (path: "d ${path} 0755 root root - -") containerPaths);

    systemd.services.hyperhive = {
      description = "hyperhive: a swarm of Claude Code agents";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ] ++ lib.optionals cfg.nats.enable [ "nats.service" ];
      restartTriggers = [ configFile ];
      path =
        [
          pkgs.git
          pkgs.bubblewrap
          pkgs.util-linux
          config.systemd.package
        ]
        ++ lib.optionals nspawn [
          pkgs.nixos-container
          config.nix.package
        ];
      environment = lib.optionalAttrs nspawn {
        # nixos-container builds each agent's system from the host's nixpkgs.
        NIX_PATH = "nixpkgs=${pkgs.path}";
        NIX_REMOTE = "daemon";
      };
      serviceConfig =
        hardening.service
        // profile
        // {
          ExecStart = "${cfg.package}/bin/hyperhive --config ${configPath} up";
          # Secrets (ANTHROPIC_API_KEY=...) stay out of the world-readable store.
          EnvironmentFile = "-/etc/hyperhive/hyperhive.env";
          ReadWritePaths = [ cfg.stateDir ] ++ lib.optionals nspawn (containerPaths ++ [ "/run/lock" ]);
        }
        // lib.optionalAttrs (user != "root" && cfg.adminGroup != "") {
          # To give the host socket to the admin group.
          SupplementaryGroups = [ cfg.adminGroup ];
        };
    };
  };
}
