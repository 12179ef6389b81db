"""hyperhive-nap: An agent parks itself until a chosen time; messages queue meanwhile."""
