"""Train a CYB model: `python train.py [--config=configs/x.py] [--config.a.b=v ...] [--workdir=DIR]`.

Without flags it runs the built-in default (configs/default.py) in runs/default. Re-running with the same
--workdir resumes from its latest checkpoint. See README.md.
"""

import logging
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags


def _exit_on_unknown_key(error: Exception, argv: list) -> None:
  """ml_collections reports an unknown --config.<key> as a bare AttributeError/KeyError (a long
  traceback); exit with one line naming the flag instead. Re-raises errors it cannot attribute."""
  while error.args and isinstance(error.args[0], BaseException):  # AttributeError(KeyError(...))
    error = error.args[0]
  message = "; ".join(str(error.args[0] if error.args else error).splitlines())
  match = re.match(r"'([^']*)'", message)
  key = match.group(1) if match else message
  overrides = [arg.split("=", 1)[0] for arg in argv[1:] if arg.startswith("--config.")]
  named = [arg for arg in overrides if key in arg[len("--config."):].split(".")]
  if not named:
    raise error
  sys.exit(f"FATAL Flags parsing error: {named[0]}: unknown config key {message}")


_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")
try:
  # Without --config, the default file and any --config.* overrides are parsed right here.
  _CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Training config file.")
except (AttributeError, KeyError) as define_error:
  _exit_on_unknown_key(define_error, sys.argv)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Where checkpoints, metrics and summaries go.")


def _parse_flags(argv):
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as error:
    _exit_on_unknown_key(error, argv)


def main(argv):
  del argv
  config = _CONFIG.value
  try:
    config.to_dict()  # a --config file that failed to load raises (a multi-line OSError) on first use
  except OSError as error:
    sys.exit("config error: " + " ".join(line.strip() for line in str(error).splitlines()))
  # Libraries (orbax, tensorboardX) log a lot at INFO through absl; keep their warnings, and our INFO.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("cyb_jax").setLevel(logging.INFO)
  from cyb_jax import configuration, trainer  # pylint: disable=g-import-not-at-top
  try:
    trainer.train(config, _WORKDIR.value)
  except configuration.ConfigError as error:
    sys.exit(f"config error: {error}")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
