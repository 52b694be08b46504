"""Train a CYB model: `python train.py [--config=configs/x.py] [--config.a.b=v ...] [--workdir=DIR]`.

Without flags it runs the built-in default (configs/default.py) in runs/default. Re-running with the same
--workdir resumes from its latest checkpoint; a second run on a --workdir in use is refused. See README.md.
"""

import sys

from absl import app
from absl import flags

from cyb_jax import cli

_CONFIG = cli.define_config_flag("Training config file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Where checkpoints, metrics and summaries go.")


def main(argv):
  del argv
  config = cli.loaded_config(_CONFIG)
  cli.quiet_libraries()
  from cyb_jax import configuration  # pylint: disable=g-import-not-at-top  (jax is slow to import)
  from cyb_jax.storage import checkpointing  # pylint: disable=g-import-not-at-top
  from cyb_jax.training import trainer  # pylint: disable=g-import-not-at-top
  from cyb_jax.training import workdir_lock  # pylint: disable=g-import-not-at-top
  try:
    trainer.train(config, _WORKDIR.value)
  except configuration.ConfigError as error:
    sys.exit(f"config error: {error}")
  except checkpointing.CheckpointError as error:
    sys.exit(f"checkpoint error: {error}")
  except workdir_lock.WorkdirLockedError as error:
    sys.exit(f"workdir error: {error}")
  except trainer.NonFiniteLossError as error:
    sys.exit(f"training error: {error}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
