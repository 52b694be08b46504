"""Where training metrics go: a JSONL file always, TensorBoard (tensorboardX) when available.

Only process 0 writes. Each record is one line: {"step": ..., "kind": "train"|"eval", ...metrics}.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import jax
import numpy as np


def to_json_types(value: Any) -> Any:
  """Numpy and jax values to plain Python (non-finite floats become strings: JSON has no NaN)."""
  if isinstance(value, dict):
    return {str(k): to_json_types(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_json_types(v) for v in value]
  if isinstance(value, (np.ndarray, jax.Array)):
    return to_json_types(np.asarray(value).tolist())
  if isinstance(value, (np.floating, float)):
    value = float(value)
    return value if math.isfinite(value) else str(value)
  if isinstance(value, np.integer):
    return int(value)
  return value


class MetricsWriter:
  """Appends records to `workdir/metrics.jsonl` and mirrors scalars (and list entries) to TensorBoard."""

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self._tb = None
    self._file = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._file = open(self.path, "a", encoding="utf-8")
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, kind: str, metrics: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "kind": kind, **to_json_types(metrics)}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for name, value in record.items():
        self._scalar(f"{kind}/{name}", value, step)

  def _scalar(self, tag: str, value: Any, step: int) -> None:
    if tag.endswith(("/step", "/kind")):
      return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      # TensorBoard tags allow [A-Za-z0-9_./-]; difficulty names like "0 hops (copy)" need folding.
      self._tb.add_scalar(re.sub(r"[^A-Za-z0-9_./-]+", "_", tag).strip("_"), value, step)
    elif isinstance(value, list) and len(value) <= 16:
      for index, item in enumerate(value):
        self._scalar(f"{tag}/{index}", item, step)
    elif isinstance(value, dict) and len(value) <= 32:
      for key, item in value.items():
        self._scalar(f"{tag}/{key}", item, step)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
