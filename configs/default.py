"""The built-in main job: CYB-AP on a synthetic pointer-chasing task, small enough for a laptop CPU.

  python train.py                       # same as --config=configs/default.py --workdir=runs/default
  python train.py --config=configs/default.py --config.train.num_steps=200 --workdir=/tmp/run
  python train.py --config=configs/default.py:addition --workdir=/tmp/add   # another synthetic task

The task: each sequence lists a random 10-cycle f as pair tokens, then 8 queries "h x -> f^h(x)" with
h = 0 (copy), 1 or 2 hops. A 1-layer transformer does about one hop per forward step, so 2-hop answers
are hard without a pause and easy with one (the pause reads its step-0 state through feedback). On 2 CPU
cores the run (6000 steps, K = 1) takes about 4 minutes and prints a summary whose difficulty table has,
per hop count and for the ';' format token: tokens, how often the threshold policy paused, its
accuracy, and the accuracy of the same model forced to answer at step 0 and at step K. What to look for:
2-hop tokens pause (about half of them or more) while 0-hop, 1-hop and format tokens almost never do,
and on 2-hop tokens the policy's accuracy is well above the forced step-0 accuracy.

`:TASK` (pointer_chasing, addition, set_sum) exposes every field of that task's config under
`config.data.task`, so any of them can be overridden on the command line. Every other config imports this
one and overrides a few fields.
"""

import dataclasses

import ml_collections
from ml_collections import config_dict

# The main job's task settings (experiments/task_search.md records how they were chosen).
POINTER_CHASING = dict(num_symbols=10, num_queries=8, max_hops=2, hop_weights=(1, 1, 2), single_cycle=True)


def _placeholder(field: dataclasses.Field):
  """A typed None for a task field whose default is None, so it can still be set from the command line."""
  text = str(field.type)
  for name, kind in (("tuple", tuple), ("float", float), ("int", int)):
    if name in text:
      return config_dict.placeholder(kind)
  return config_dict.placeholder(str)


def task_fields(task: str) -> ml_collections.ConfigDict:
  """Every field of `task`'s config dataclass, at its default or at this file's choice."""
  from cyb_jax.data import tasks  # pylint: disable=g-import-not-at-top  (keeps config loading light)
  if task not in tasks.TASKS:
    raise ValueError(f"unknown synthetic task {task!r}; known: {sorted(tasks.TASKS)}")
  config_cls, _ = tasks.TASKS[task]
  chosen = POINTER_CHASING if task == "pointer_chasing" else {}
  fields = ml_collections.ConfigDict()
  for field in dataclasses.fields(config_cls):
    value = chosen.get(field.name, field.default)
    fields[field.name] = _placeholder(field) if value is None else value
  return fields


def get_config(task: str = "pointer_chasing") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # What to read: a synthetic task, "text_file" or "tfds" (see cyb_jax/data/pipeline.py DataConfig).
  config.data = ml_collections.ConfigDict()
  config.data.name = task or "pointer_chasing"
  config.data.seq_len = config_dict.placeholder(int)   # None: the task's own length
  config.data.task = task_fields(config.data.name)     # the task's config fields (see cyb_jax/data/)
  config.data.eval_seed = 0
  config.data.eval_examples = 512
  config.data.text_path = ""              # a text file; or a .jsonl file / folder of .txt files: documents
  config.data.eval_fraction = 0.1         # text: the last fraction of tokens; documents: of the documents
  config.data.text_field = "text"         # .jsonl: the field holding each document's text
  config.data.split_seed = 0              # documents: which ones are eval (seeded; see cyb_jax/data/text.py)
  config.data.encoding = "utf-8"          # strict; the byte tokenizer reads a text file's raw bytes
  config.data.special_text = "plain"      # text spelling a special token: "plain" (warned), "special", "error"
  config.data.tfds_name = "lm1b"
  config.data.tfds_data_dir = config_dict.placeholder(str)
  config.data.tfds_text_field = "text"
  config.data.tfds_train_split = "train"
  config.data.tfds_eval_split = "test"
  config.data.packing_bins = 16
  config.data.tokenizer = "byte"          # "byte", "sentencepiece", "hf" (a model dir) or "bpe" (trained here)
  config.data.tokenizer_path = ""         # hf: model dir ("" = config.init_from_hf); bpe: "" = WORKDIR/tokenizer.json
  config.data.spm_model_path = ""
  config.data.bpe_vocab_size = 4096       # bpe: vocabulary trained on the text file's training split
  config.data.add_bos = config_dict.placeholder(bool)  # sequences start with BOS; None = the tokenizer's rule
  config.data.read_threads = 1
  config.data.prefetch_batches = 4

  # Architecture (cyb_jax/model.py ModelConfig). vocab_size 0 = take it from the data.
  config.model = ml_collections.ConfigDict()
  config.model.vocab_size = 0
  config.model.width = 64
  config.model.num_layers = 1
  config.model.num_heads = 4
  config.model.mlp_hidden = 256
  config.model.max_len = 0              # 0 = the data's sequence length
  config.model.max_pauses = 2
  config.model.dtype = "float32"
  config.model.remat = False
  config.model.scan_layers = True       # layers as one lax.scan over stacked parameters; False = unrolled
  config.model.dk_init_prob = 0.3
  config.model.pause_context = "private"
  config.model.pause_feedback = True
  config.model.pause_feedback_layer = -1  # the layer whose output pause feedback reads; -1 = the last
  config.model.pause_reads_token = True
  config.model.rope_base = 10000.0
  # Block options of open-weight families (cyb_jax/model/config.py); these values are cyb_jax's own
  # block. With config.init_from_hf they all come from the checkpoint's config.json instead.
  config.model.num_kv_heads = 0         # grouped KV heads; 0 = num_heads
  config.model.head_dim = 0             # 0 = width // num_heads
  config.model.qkv_bias = False
  config.model.out_bias = False
  config.model.mlp_bias = False
  config.model.qk_norm = False
  config.model.norm_eps = 1e-6
  config.model.norm_offset = False      # RMSNorm scale 1 + w (Gemma)
  config.model.sandwich_norms = False   # Gemma 2/3
  config.model.embed_scale = False      # input embeddings x sqrt(width) (Gemma)
  config.model.mlp_activation = "silu"  # or "gelu_tanh"
  config.model.tie_embeddings = False
  config.model.query_scale = 0.0        # 0 = head_dim ** -0.5
  config.model.attn_softcap = 0.0       # 0 = off
  config.model.final_softcap = 0.0      # 0 = off
  config.model.layer_windows = ()       # sliding window per layer in positions (0 = full); () = all full
  config.model.rope_local_base = 0.0    # RoPE base of windowed layers; 0 = rope_base
  config.model.rope_scaling = "none"    # "none", "linear" or "llama3"
  config.model.rope_factor = 1.0
  config.model.rope_low_freq_factor = 1.0
  config.model.rope_high_freq_factor = 4.0
  config.model.rope_original_max_len = 8192
  # Real-token attention: "auto" (blockwise online softmax once the keys exceed one block: memory linear
  # in the sequence length), "dense" (the [N, N] scores; the test oracle), "blockwise", or "pallas" (fused
  # flash-attention kernels for TPU/GPU, not yet run on either; interpreted, slowly, on CPU).
  config.model.attention = "auto"
  config.model.attention_block = 256

  # K: pause steps per token during training (and the most any policy may take); <= model.max_pauses.
  # K = 1 here: with K = 2 the fixed-pause baseline did not learn to use the second step on this task.
  config.num_pauses = 1

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
  # Any CYB objective: + weight * mean_j(-log a_j). Without it CYB-AP collapsed to never pausing here:
  # the rarely reached pause step got no training signal and never became worth reaching.
  config.objective.anytime_weight = 1.0

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 3e-3
  config.optim.warmup_steps = 100
  config.optim.schedule = "cosine"      # after warm-up: "cosine" decay to 0 at num_steps, or "constant"
  config.optim.weight_decay = 0.01
  config.optim.decay_vectors = True     # False: decay matrices only, not norm scales and biases
  config.optim.clip_norm = 1.0
  config.optim.b1 = 0.9
  config.optim.b2 = 0.98

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 32          # global batch; must divide by the number of devices
  config.train.num_steps = 6000
  config.train.log_every = 50
  config.train.eval_every = 2000
  config.train.eval_batches = 8         # batches of batch_size per periodic eval (0 = the whole split)
  # Batches of the end-of-run eval, whose numbers are the summary (0 = the whole eval split; at real
  # model size on a CPU that can take many minutes). eval.py reads the whole split unless --max_batches.
  config.train.final_eval_batches = 0
  config.train.checkpoint_every = 1000
  config.train.keep_checkpoints = 3
  # The training data starts at this global batch of the seed's order, e.g. for the second half of
  # a warm start continuing where its first half's data stopped (synthetic tasks and text files).
  config.train.skip_batches = 0

  # Inference policy used for eval metrics during training and in the summary.
  config.eval = ml_collections.ConfigDict()
  config.eval.policy = "threshold"
  config.eval.tau = 0.5
  config.eval.q = 0.5
  # Thresholds replayed on the same eval forward passes during training (threshold policy, K > 0): each
  # eval record gains "tau_sweep", the quality-versus-pauses curve. Empty = none.
  config.eval.tau_sweep = ()

  # Devices: a mesh of (data, fsdp); -1 = all remaining devices.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.num_devices = -1          # use the first n devices (-1 = all), e.g. to compare 1 vs 8
  # Several processes (hosts): join JAX's multi-controller runtime (jax.distributed.initialize). On TPU
  # pod slices and SLURM/MPI/Kubernetes clusters JAX discovers the cluster settings; elsewhere give them.
  # `python -m cyb_jax.launch` sets them for local processes (see README and cyb_jax/parallel/runtime.py).
  config.distributed = False
  config.cluster = ml_collections.ConfigDict()
  config.cluster.coordinator_address = ""  # "host:port" of process 0 ("" = discovered)
  config.cluster.num_processes = 0      # 0 = discovered
  config.cluster.process_id = -1        # -1 = discovered

  # Start from a no-pause (max_pauses = 0) checkpoint's work directory: its parameters are extended
  # with fresh <dk> and pause parameters (the published fine-tuning setting).
  config.init_from = ""
  # With init_from: keep the source's pause parameters (pause embeddings, feedback) when it was trained
  # with pauses (e.g. a pause_ce fine-tune), instead of starting them fresh; the <dk> head restarts,
  # calibrated to model.dk_init_prob. Warm-starts CYB from a fixed-pause model (DESIGN.md section 8).
  config.init_keep_pauses = False
  # Or from a local Hugging Face checkpoint directory (Llama, Qwen2/3, Gemma 2/3; see
  # configs/finetune_hf.py): its config.json decides the architecture, its tokenizer the vocabulary.
  config.init_from_hf = ""
  return config
