"""Baseline: no pauses, plain cross-entropy at step 0 (the model a CYB run is compared with).

  python train.py --config=configs/ce.py --workdir=runs/ce
"""

from configs import default


def get_config():
  config = default.get_config()
  config.objective.name = "ce"
  config.num_pauses = 0
  config.eval.policy = "never"
  return config
