"""The built-in main job: CYB-AP on a synthetic pointer-chasing task, small enough for a laptop CPU.

  python train.py                       # same as --config=configs/default.py --workdir=runs/default
  python train.py --config=configs/default.py --config.train.num_steps=200 --workdir=/tmp/run

On 2 CPU cores it trains, evaluates and prints a summary in a few minutes. The summary table has one row
per difficulty label (hop count h, plus the `;` format token): how many eval tokens, how often the
threshold policy paused, its accuracy, and the accuracy of the same model forced to answer at step 0 and
at step K. What to look for: hard rows (large h) pause more than easy ones, and their accuracy with
pauses beats the forced step-0 accuracy.

Every other config imports this one and overrides a few fields.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # What to read: a synthetic task, "text_file" or "tfds" (see cyb_jax/data/pipeline.py DataConfig).
  config.data = ml_collections.ConfigDict()
  config.data.name = "pointer_chasing"
  config.data.seq_len = config_dict.placeholder(int)   # None: the task's own length
  config.data.task = ml_collections.ConfigDict()       # overrides of the task's config fields
  config.data.task.num_symbols = 8
  config.data.task.num_queries = 12
  config.data.task.max_hops = 4
  config.data.eval_seed = 0
  config.data.eval_examples = 256
  config.data.text_path = ""
  config.data.eval_fraction = 0.1
  config.data.tfds_name = "lm1b"
  config.data.tfds_data_dir = config_dict.placeholder(str)
  config.data.tfds_text_field = "text"
  config.data.tfds_train_split = "train"
  config.data.tfds_eval_split = "test"
  config.data.packing_bins = 16
  config.data.tokenizer = "byte"
  config.data.spm_model_path = ""
  config.data.read_threads = 1
  config.data.prefetch_batches = 4

  # Architecture (cyb_jax/model.py ModelConfig). vocab_size 0 = take it from the data.
  config.model = ml_collections.ConfigDict()
  config.model.vocab_size = 0
  config.model.width = 64
  config.model.num_layers = 2
  config.model.num_heads = 4
  config.model.mlp_hidden = 256
  config.model.max_len = 0              # 0 = the data's sequence length
  config.model.max_pauses = 2
  config.model.dtype = "float32"
  config.model.remat = False
  config.model.dk_init_prob = 0.3
  config.model.pause_context = "private"
  config.model.pause_feedback = True
  config.model.pause_reads_token = True
  config.model.rope_base = 10000.0

  # K: pause steps per token during training (and the most any policy may take); <= model.max_pauses.
  config.num_pauses = 2

  # The objective (cyb_jax/losses.py): ce, pause_ce, cyb_ap, cyb_va or cyb_dp, and its hyperparameters;
  # ones the chosen objective does not use are ignored.
  config.objective = ml_collections.ConfigDict()
  config.objective.name = "cyb_ap"
  config.objective.gamma = 0.9          # AP: reward discount per pause (time cost)
  config.objective.omega = 0.1          # AP: hazard of a forced early answer
  config.objective.prior_p = 0.7        # VA: geometric prior's stopping probability per step
  config.objective.beta = 0.1           # VA: KL weight
  config.objective.cost = 0.05          # DP: price per pause (initial value of the dual variable)
  config.objective.budget = config_dict.placeholder(float)  # DP: target pauses/token; None = fixed cost
  config.objective.dual_lr = 0.01       # DP: dual ascent step size
  config.objective.anytime_weight = 0.0  # any CYB objective: + weight * mean_j(-log a_j)

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 3e-3
  config.optim.warmup_steps = 100
  config.optim.weight_decay = 0.01
  config.optim.clip_norm = 1.0
  config.optim.b1 = 0.9
  config.optim.b2 = 0.98

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 32          # global batch; must divide by the number of devices
  config.train.num_steps = 1500
  config.train.log_every = 50
  config.train.eval_every = 500
  config.train.eval_batches = 8         # batches of batch_size per periodic eval (0 = the whole split)
  config.train.checkpoint_every = 500
  config.train.keep_checkpoints = 3

  # Inference policy used for eval metrics during training and in the summary.
  config.eval = ml_collections.ConfigDict()
  config.eval.policy = "threshold"
  config.eval.tau = 0.5
  config.eval.q = 0.5

  # Devices: a mesh of (data, fsdp); -1 = all remaining devices.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.num_devices = -1          # use the first n devices (-1 = all), e.g. to compare 1 vs 8
  config.distributed = False            # call jax.distributed.initialize() (multi-host TPU/GPU)

  # Start from a no-pause (max_pauses = 0) checkpoint's work directory: its parameters are extended
  # with fresh <dk> and pause parameters (the published fine-tuning setting).
  config.init_from = ""
  return config
