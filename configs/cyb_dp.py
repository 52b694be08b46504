"""CYB-DP, compute budget: expected loss + a price per pause, the price a dual variable that holds the
average at `budget` pauses per token.

  python train.py --config=configs/cyb_dp.py --workdir=runs/cyb_dp
"""

from configs import default


def get_config():
  config = default.get_config()
  config.objective.name = "cyb_dp"
  config.objective.cost = 0.0
  config.objective.budget = 0.25  # about the share of 2-hop answers among loss tokens
  config.objective.dual_lr = 0.05
  return config
