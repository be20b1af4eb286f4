"""Baselines doing the same work as the runner, without it (issue 4)."""
