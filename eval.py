"""Evaluate a checkpoint: `python eval.py --workdir=DIR [--checkpoint=STEP] [--policy=threshold --tau=0.5 ...]
[--config.a.b=v ...] [--config=configs/x.py]`.

Writes DIR/eval/report.json, report.md and PNG plots (see cyb_jax/evaluation/report.py). The model comes
from the checkpoint. The data and eval settings come from the config the checkpoint was trained with
(saved in it), `--config.a.b=v` overriding any of them; `--config=FILE` uses that file instead (a
warning names the data settings where it differs from the checkpoint's).
"""

import sys

from absl import app
from absl import flags

from cyb_jax import cli

_CONFIG = cli.define_config_flag("A config file instead of the one saved in the checkpoint.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory of the run to evaluate.", required=True)
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Checkpoint step (default: the latest).")
_POLICY = flags.DEFINE_enum("policy", None, ["threshold", "sample", "cumulative", "never", "always"],
                            "Inference policy (default: config.eval.policy).")
_TAU = flags.DEFINE_float("tau", None, "Threshold policy: pause while P(<dk>) > tau.")
_Q = flags.DEFINE_float("q", None, "Cumulative policy: stop once the halted mass reaches q.")
_MAX_BATCHES = flags.DEFINE_integer("max_batches", 0, "Evaluate at most this many batches (0 = all).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 0, "Eval batch size (0 = config.train.batch_size).")
_SAMPLES = flags.DEFINE_integer("num_samples", 4, "Generated samples in the report.")
_AMBIGUOUS = flags.DEFINE_list(
    "ambiguous_words", None, "Text: words whose pause variability the report shows, e.g. won,lead,can,will "
    "(the default; matched as whole words, with or without a leading space).")
_OUT = flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/eval).")


def main(argv):
  del argv
  config, overrides = cli.config_and_overrides(_CONFIG)
  cli.quiet_libraries()
  from cyb_jax import configuration  # pylint: disable=g-import-not-at-top
  from cyb_jax.evaluation import eval_checkpoint  # pylint: disable=g-import-not-at-top
  from cyb_jax.storage import checkpointing  # pylint: disable=g-import-not-at-top
  try:
    result = eval_checkpoint.evaluate_checkpoint(
        config, _WORKDIR.value, step=_CHECKPOINT.value, policy=_POLICY.value, tau=_TAU.value,
        q=_Q.value, max_batches=_MAX_BATCHES.value, batch_size=_BATCH_SIZE.value,
        num_samples=_SAMPLES.value, out_dir=_OUT.value, overrides=overrides,
        ambiguous_words=_AMBIGUOUS.value)
  except (configuration.ConfigError, checkpointing.CheckpointError) as error:
    sys.exit(f"eval error: {error}")
  print(f"{result['policy']}: nll_policy {result['nll_policy']:.4f}, accuracy {result['accuracy']:.4f}, "
        f"mean pauses {result['mean_pauses']:.3f}, over {result['num_tokens']} tokens; report in "
        f"{result['out_dir']}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
