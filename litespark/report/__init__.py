"""Run reports and A/B comparisons from a run directory's own records (``python -m litespark.report``)."""
