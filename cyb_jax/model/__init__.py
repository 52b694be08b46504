"""The network and its pause rollout.

  config.py       ModelConfig: architecture, block options of open-weight families, pause options
  layers.py       RMSNorm, rotary positions (with scaling), gated MLP, soft-capping
  attention.py    one softmax over shared real-token keys and a private pause chain (GQA, windows)
  transformer.py  embeddings, the block, the one layer loop every caller shares, the output head
  rollout.py      parameters, step 0 and the pause steps, `rollout` and `rollout_stats`

`from cyb_jax import model` gives the public names below.
"""

from cyb_jax.model.config import DTYPES, PAUSE_CONTEXTS, AttentionSpec, ModelConfig, RopeSpec, parameter_shapes
from cyb_jax.model.rollout import (Params, causal_forward, extend_params, init, input_embedding_rms,
                                   pause_inputs, pause_step, plain_keys, rollout, rollout_readout,
                                   rollout_stats, calibrate_dk_bias)
from cyb_jax.model.transformer import (Block, embed_tokens, layer_period, normalise_final, output_logits, run_layers,
                                       stack_blocks, unstack_blocks)
