{
  description = "hyperhive: a swarm of Claude Code agents on one host, steered by an operator";

  # No inputs: the module takes pkgs from the system that imports it, and the
  # package to run from services.hyperhive.package.
  outputs =
    { self }:
    {
      nixosModules.default = import ./module.nix;
      nixosModules.hyperhive = self.nixosModules.default;

      # The shape of an agent's NixOS container; see agent.nix.
      lib.agentContainer = import ./agent.nix;
    };
}
