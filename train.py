"""Train a CYB model: `python train.py [--config=configs/x.py] [--config.a.b=v ...] [--workdir=DIR]`.

Without flags it runs the built-in default (configs/default.py) in runs/default. Re-running with the same
--workdir resumes from its latest checkpoint. See README.md.
"""

import logging
import os
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Training config file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Where checkpoints, metrics and summaries go.")


def main(argv):
  del argv
  # Libraries (orbax, tensorboardX) log a lot at INFO through absl; keep their warnings, and our INFO.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("cyb_jax").setLevel(logging.INFO)
  from cyb_jax import configuration, trainer  # pylint: disable=g-import-not-at-top
  try:
    trainer.train(_CONFIG.value, _WORKDIR.value)
  except configuration.ConfigError as error:
    sys.exit(f"config error: {error}")


if __name__ == "__main__":
  app.run(main)
