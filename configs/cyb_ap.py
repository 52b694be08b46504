"""CYB-AP, anytime prediction: reward gamma^j for a correct answer at step j, forced answers at hazard omega.

  python train.py --config=configs/cyb_ap.py --workdir=runs/cyb_ap
"""

from configs import default


def get_config():
  config = default.get_config()
  config.objective.name = "cyb_ap"
  config.objective.gamma = 0.9
  config.objective.omega = 0.1
  return config
