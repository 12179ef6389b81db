# The hyperhive.toml the module writes, from its options: each typed option under
# the config key it is named after (stateDir -> [hive] state_dir,
# agents.<name>.allowedRecipients -> [agents.<name>] allowed_recipients,
# containers.memoryMaxMb -> [containers] memory_max_mb; the
# dashboard's options are the dashboard plugin's [web] section; cluster.* are
# [broker] backend, [jetstream]'s connection keys and [cluster] host), over the freeform
# `settings`. tests/test_nix.py checks these keys against the ones `hyperhive init`
# writes.
#
# Builtins only, so the tests can evaluate it without nixpkgs.
cfg:
let
  # TOML has no null: an option left null keeps the daemon's default.
  withoutNulls = attrs: removeAttrs attrs (builtins.filter (name: attrs.${name} == null) (builtins.attrNames attrs));
  nonEmpty = attrs: removeAttrs attrs (builtins.filter (name: attrs.${name} == { }) (builtins.attrNames attrs));

  # Plugin sections ([agents.<name>.allowlist], ...) pass through as they are.
  agent =
    entry:
    withoutNulls (
      removeAttrs entry [ "allowedRecipients" ]
      // {
        allowed_recipients = entry.allowedRecipients;
      }
    );

  typed = nonEmpty {
    hive = withoutNulls {
      state_dir = toString cfg.stateDir;
      plugins = cfg.plugins;
      admin_group = cfg.adminGroup;
    };
    web = withoutNulls { bind = cfg.dashboard.bind; };
    containers = withoutNulls {
      memory_max_mb = cfg.containers.memoryMaxMb or null;
      memory_high_mb = cfg.containers.memoryHighMb or null;
      pids_max = cfg.containers.pidsMax or null;
      cpu_weight = cfg.containers.cpuWeight or null;
    };
    agents = builtins.mapAttrs (name: agent) cfg.agents;
  }
  // (if clustered then jetstream else { });

  # cluster.enable: the JetStream broker; the cluster's URLs, credentials and TLS; this host's name.
  clustered = cfg.cluster.enable or false;
  tls = cfg.cluster.tls or { };
  jetstream = nonEmpty {
    broker.backend = "jetstream";
    jetstream = withoutNulls {
      urls = cfg.cluster.natsUrls or [ "nats://127.0.0.1:4222" ];
      credentials_file = cfg.cluster.credentialsFile or null;
      tls_ca = tls.ca or null;
      tls_cert = tls.cert or null;
      tls_key = tls.key or null;
    };
    cluster = withoutNulls { host = cfg.cluster.host or null; };
  };
in
{
  inherit typed;

  # Keys a typed option sets, as [ section key ]: `settings` must leave them alone.
  typedKeys = builtins.concatMap (
    section: map (key: [ section key ]) (builtins.attrNames typed.${section})
  ) (builtins.attrNames typed);

  toml =
    cfg.settings
    // builtins.mapAttrs (section: values: (cfg.settings.${section} or { }) // values) typed;
}
