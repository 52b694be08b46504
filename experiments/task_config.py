"""configs/default.py with every field of one synthetic task's config exposed for overrides.

  python train.py --config=experiments/task_config.py:set_sum --config.data.task.max_keys=8 ...

configs/default.py only lists pointer_chasing's num_symbols / num_queries / max_hops under data.task,
and ml_collections refuses overrides of keys that do not exist (e.g. single_cycle, hop_weights). This
file keeps default.py's values and adds the task's remaining fields (None-valued ones as placeholders).
"""

import dataclasses
import os
import sys

from ml_collections import config_dict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from configs import default  # pylint: disable=g-import-not-at-top
from cyb_jax.data import tasks  # pylint: disable=g-import-not-at-top


def _placeholder_type(field):
  text = str(field.type)
  if "tuple" in text:
    return tuple
  if "int" in text:
    return int
  if "float" in text:
    return float
  return str


def get_config(task_name: str = "pointer_chasing"):
  config = default.get_config()
  task_name = task_name or "pointer_chasing"
  config_cls, _ = tasks.TASKS[task_name]
  keep = config.data.task.to_dict() if task_name == "pointer_chasing" else {}
  task = config_dict.ConfigDict()
  for field in dataclasses.fields(config_cls):
    if field.name in keep:
      value = keep[field.name]
    else:
      value = field.default
    if value is None:
      task[field.name] = config_dict.placeholder(_placeholder_type(field))
    else:
      task[field.name] = value
  config.data.name = task_name
  config.data.task = task
  return config
