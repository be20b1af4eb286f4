"""Room: the contact sheet (`pipeline report`), one static HTML page of a run's jobs on a
grid of two chosen dimensions, read from the manifest in two streamed passes."""

from pipeline.review.layout import Layout, dimension_value
from pipeline.review.sheet import DEFAULT_NAME, write_sheet

__all__ = ["DEFAULT_NAME", "Layout", "dimension_value", "write_sheet"]
