"""One module per scenario of issue 4; each exposes ``NAME`` and ``run(config)``."""
