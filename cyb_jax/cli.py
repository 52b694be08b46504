"""Command-line plumbing shared by train.py, eval.py and sample.py: the --config flag with one-line
errors.

ml_collections reports an unknown `--config.<key>` as a bare AttributeError/KeyError (a long traceback),
and a --config file that fails to load only on first use; these helpers turn both into one line.
"""

from __future__ import annotations

import logging
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                              "default.py")


def _exit_on_unknown_key(error: Exception, argv: list) -> None:
  """Exits with one line naming the unknown --config.<key>; re-raises errors it cannot attribute."""
  inner = error
  while inner.args and isinstance(inner.args[0], BaseException):  # AttributeError(KeyError(...))
    inner = inner.args[0]
  message = "; ".join(str(inner.args[0] if inner.args else inner).splitlines())
  match = re.match(r"'([^']*)'", message)
  key = match.group(1) if match else message
  overrides = [arg.split("=", 1)[0] for arg in argv[1:] if arg.startswith("--config.")]
  named = [arg for arg in overrides if key in arg[len("--config."):].split(".")]
  if not named:
    raise error
  sys.exit(f"FATAL Flags parsing error: {named[0]}: unknown config key {message}")


def define_config_flag(help_text: str):
  """DEFINE_config_file("config") defaulting to configs/default.py, exiting in one line on a bad key."""
  try:
    # Without --config, the default file and any --config.* overrides are parsed right here.
    return config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, help_text)
  except (AttributeError, KeyError) as error:
    _exit_on_unknown_key(error, sys.argv)


def parse_flags(argv):
  """absl flags parser for `app.run(..., flags_parser=parse_flags)`."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as error:
    _exit_on_unknown_key(error, argv)


def loaded_config(config_flag):
  """The config, or exit in one line when its file failed to load (a multi-line OSError on first use)."""
  config = config_flag.value
  try:
    config.to_dict()
  except OSError as error:
    sys.exit("config error: " + " ".join(line.strip() for line in str(error).splitlines()))
  return config


def config_and_overrides(config_flag):
  """(config, overrides) for eval.py and sample.py: the --config file's config with its overrides applied,
  or None when no --config was given (the checkpoint's saved config is then the base), and the
  `--config.a.b=v` values as {"a.b": v} (typed by the config file, default configs/default.py), which
  the caller applies on the saved config."""
  holder = flags.FLAGS[config_flag.name]
  overrides = dict(config_flags.get_override_values(holder))
  return (loaded_config(config_flag) if holder.present else None), overrides


def quiet_libraries() -> None:
  """Libraries (orbax, tensorboardX) log a lot at INFO through absl: keep their warnings, and our INFO."""
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("cyb_jax").setLevel(logging.INFO)
