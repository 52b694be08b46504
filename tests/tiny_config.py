"""A tiny training config for the trainer tests: seconds per run on a CPU."""

from configs import default


def get_config():
  config = default.get_config()
  config.data.task.num_symbols = 4
  config.data.task.num_queries = 3
  config.data.task.max_hops = 2
  config.data.eval_examples = 16
  config.data.read_threads = 0
  config.data.prefetch_batches = 0
  config.model.width = 16
  config.model.num_layers = 1
  config.model.num_heads = 2
  config.model.mlp_hidden = 32
  config.model.max_pauses = 2
  config.num_pauses = 2
  config.optim.warmup_steps = 2
  config.train.batch_size = 8
  config.train.num_steps = 12
  config.train.log_every = 1
  config.train.eval_every = 6
  config.train.eval_batches = 1
  config.train.checkpoint_every = 4
  config.train.keep_checkpoints = 10
  return config
