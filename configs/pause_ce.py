"""Baseline: always K pauses, cross-entropy at the last step only (Goyal et al. 2023).

  python train.py --config=configs/pause_ce.py --workdir=runs/pause_ce
"""

from configs import default


def get_config():
  config = default.get_config()
  config.objective.name = "pause_ce"
  config.eval.policy = "always"
  return config
