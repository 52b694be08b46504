"""CYB-VA, variational: expected loss under the halting distribution + beta KL to a geometric prior.

  python train.py --config=configs/cyb_va.py --workdir=runs/cyb_va
"""

from configs import default


def get_config():
  config = default.get_config()
  config.objective.name = "cyb_va"
  config.objective.prior_p = 0.7
  config.objective.beta = 0.1
  return config
