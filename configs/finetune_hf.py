"""Fine-tune a pretrained open-weight LM (Llama, Qwen2/3, Gemma 2/3) with pauses: the published setting.

The model's architecture comes from the checkpoint's config.json and its vocabulary from the checkpoint's
tokenizer (tokenizer.json or tokenizer.model); `model.*` shape fields here are ignored, only the pause
and run options (max_pauses, pause_feedback, dk_init_prob, dtype, remat, ...) apply. Step 0 of the pause
model starts out exactly as the pretrained model; the `<dk>` bias is calibrated on the data so the initial
`<dk>` probability is `model.dk_init_prob`. Nothing is downloaded at run time: fetch the checkpoint first
with the hub's own CLI, e.g.

  hf download HuggingFaceTB/SmolLM2-135M --local-dir ~/models/SmolLM2-135M     # or Qwen/Qwen2.5-0.5B,
                                                                              # google/gemma-3-270m, ...
  python train.py --config=configs/finetune_hf.py --config.init_from_hf=$HOME/models/SmolLM2-135M \
      --config.data.text_path=../shared/data/tinyshakespeare.txt --workdir=runs/smollm2_cyb

On a TPU VM or GPU machine parameters and optimiser state are sharded over every device
(`mesh.fsdp = -1`) and the matmuls run in bfloat16 (float32 master weights). At the end the run prints
the eval summary: nll_policy (nats per word piece), accuracy, mean pauses, nll if forced to stop at each
step, and dk_auroc; `python eval.py --workdir=...` then writes the report (the model directory, tokenizer
and text file come from the run's checkpoint), whose "pauses by token" tables list word pieces.

The same path runs here on a tiny random Llama-family fixture made with the real transformers library
(a few seconds; its tokenizer splits text into small pieces):

  python train.py --config=configs/finetune_hf.py --config.init_from_hf=tests/fixtures/hf/llama_llama3rope \
      --config.model.dtype=float32 --config.train.num_steps=20 --config.train.batch_size=8 \
      --config.data.seq_len=64 --workdir=/tmp/hf_fixture_run
"""

from configs import default


def get_config():
  config = default.get_config()
  config.init_from_hf = ""              # a local Hugging Face checkpoint directory (required)
  config.data.name = "text_file"
  config.data.text_path = "../shared/data/tinyshakespeare.txt"
  config.data.task = {}
  config.data.tokenizer = "hf"          # the checkpoint's own tokenizer; BOS as the model expects
  config.data.seq_len = 256
  config.model.dtype = "bfloat16"
  config.model.max_pauses = 1
  config.model.pause_feedback = True    # zero-initialised: step 0 and the first pause start as the model
  config.model.dk_init_prob = 0.1
  config.num_pauses = 1
  config.objective.name = "cyb_ap"
  config.optim.learning_rate = 2e-5
  config.optim.warmup_steps = 100
  config.optim.decay_vectors = False    # a pretrained model's norm scales and biases are not decayed
  config.train.batch_size = 16
  config.train.num_steps = 2000
  config.train.eval_every = 500
  config.train.eval_batches = 16
  config.train.checkpoint_every = 500
  config.mesh.fsdp = -1                 # parameters and optimiser state over every device
  config.eval.policy = "threshold"
  return config
