"""Room: from a finished remote task to verified files with provenance sidecars:
fetching, the download itself, resumes, the SSRF guard and durable placement."""

from pipeline.outputs.durable import Committer
from pipeline.outputs.fetch import fetch_outputs

__all__ = ["Committer", "fetch_outputs"]
