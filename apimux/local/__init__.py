"""Local, offline models that run in-process (no network, no torch)."""
