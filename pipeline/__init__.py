"""pipeline: run large batches of generative-media jobs declaratively and resumably."""

__version__ = "0.1.0"
