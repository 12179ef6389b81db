"""hyperhive-web: the operator dashboard, a QuartTrio app served inside the daemon."""
