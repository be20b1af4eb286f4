"""Room: a run's outputs as a dataset (`pipeline export`): rows from the manifest, one per
output file, written as a Hugging Face folder (hard links, no sidecars), CSV or Parquet.
It reads the manifest and the output folder, and never changes either. pyarrow lives
only here (``parquet.py``, the optional `pipeline[parquet]` extra)."""

from pipeline.dataset.export import FORMATS, Exported, export_dataset, parse_states

__all__ = ["FORMATS", "Exported", "export_dataset", "parse_states"]
