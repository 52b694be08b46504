"""Tiny training configs for the trainer tests: a few seconds per run on a CPU once compiled.

  python train.py --config=tests/tiny_config.py --workdir=/tmp/tiny            # CYB-DP with a pause budget
  python train.py --config=tests/tiny_config.py:nopause --workdir=/tmp/plain   # plain LM, no pause params

Both read pointer chasing with 4 symbols, 3 queries and hops 0..2 (vocabulary 26, rows of 16 tokens).
"""

from configs import default


def get_config(variant: str = ""):
  config = default.get_config()
  config.data.task.num_symbols = 4
  config.data.task.num_queries = 3
  config.data.task.max_hops = 2
  config.data.eval_examples = 16
  config.data.read_threads = 0          # read in the training thread: deterministic, no thread start-up
  config.data.prefetch_batches = 0
  config.model.width = 16
  config.model.num_layers = 1
  config.model.num_heads = 2
  config.model.mlp_hidden = 32
  config.model.max_pauses = 2
  config.num_pauses = 2
  # CYB-DP with a budget below the initial pause rate, so the dual variable (the price of a pause) rises.
  config.objective.name = "cyb_dp"
  config.objective.cost = 0.05
  config.objective.budget = 0.1
  config.objective.dual_lr = 0.1
  config.optim.warmup_steps = 2
  config.train.batch_size = 8
  config.train.num_steps = 12
  config.train.log_every = 1
  config.train.eval_every = 6
  config.train.eval_batches = 1
  config.train.checkpoint_every = 4
  config.train.keep_checkpoints = 20
  config.eval.tau_sweep = (0.5, 0.99)   # eval records carry the quality-versus-pauses curve
  if variant == "nopause":
    config.model.max_pauses = 0
    config.num_pauses = 0
    config.objective.name = "ce"
    config.objective.budget = None
    config.eval.policy = "never"
  elif variant:
    raise ValueError(f"unknown tiny config variant {variant!r}; known: '', 'nopause'")
  return config
