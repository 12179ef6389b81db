"""hyperhive-crashwatch: Reports container crashes to the manager's inbox."""
