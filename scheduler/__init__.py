"""labq: a fair-share GPU job scheduler for research teams (daemon, policy, API, CLI)."""

__version__ = "0.1.0"
