"""Where a run's metrics go: ``RUN_DIR/metrics.jsonl`` (one JSON object per record, appended) and
TensorBoard, written by rank 0 only.  ``python -m litespark.report`` reads the JSONL back."""

from __future__ import annotations

import json
from pathlib import Path

from litespark.log import get_logger

log = get_logger(__name__)


class MetricsLog:
    """metrics.jsonl and TensorBoard on rank 0 (``enabled``); a no-op elsewhere."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed; metrics go to metrics.jsonl only")

    def write(self, record: dict) -> None:
        """Append ``record`` (which has a ``step`` and a ``split``) to the JSONL and its numbers to TensorBoard."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(f"{record.get('split', 'train')}/{key}", value, record["step"])
            self.tb.flush()
