"""A slow, plain-numpy float64 transformer that reads cyb_jax's params pytree: the test oracle.

It follows DESIGN.md section 3 literally and never calls cyb_jax. A pause chain is not a fused scan here:
z_{i,j} is the last output of an ordinary causal transformer run on `x_0 .. x_i, <pause>_1 .. <pause>_j`,
every pause at rotary position i; with feedback the sequence grows one pause at a time. The stream variant
is one causal pass over N(K+1) inputs at positions 0 .. N(K+1)-1.

The block options of open-weight families are written out here a second time, independently of
cyb_jax/model, from their published definitions (PRETRAINED.md, the Llama 3 and Gemma papers'
descriptions as transformers implements them): grouped KV heads, q/k/v/o and MLP biases, q/k RMSNorm,
the (1 + w) norm, RMSNorm epsilon, sandwich norms, the sqrt(D) input-embedding scale, tanh-GELU, tied
embeddings, query scale, attention and final-logit soft-capping, sliding windows (by position: key
position k is visible to query position p iff p - k < W), per-layer RoPE base, linear and llama3 RoPE
scaling.

`config` is a ModelConfig (only its fields are read, never its methods); every size is read off the params.

API (all numpy float64):
  to_numpy(params)                                      -> the params pytree as float64 numpy arrays
  forward(params, config, x_TD, positions_T)            -> final residual [T, D] (before the final norm)
  logits(params, config, hidden_TD)                     -> [T, V+1], `<dk>` last (-inf if max_pauses = 0)
  reference_logits(params, config, x_TD, positions_T)   -> logits(forward(...))
  token_input(params, config, token)                    -> [D], a real token's input embedding
  pause_input(params, config, token, step, prev_hidden) -> [D], step is 1-based
  rollout(params, config, tokens_N, num_pauses)         -> [N, K+1, V+1] for config.pause_context
"""

from __future__ import annotations

import math

import numpy as np


def to_numpy(params):
  if isinstance(params, dict):
    return {key: to_numpy(value) for key, value in params.items()}
  if isinstance(params, (list, tuple)):
    return [to_numpy(value) for value in params]
  return np.asarray(params, dtype=np.float64)


def rms_norm(config, x, weight):
  scale = 1.0 + weight if config.norm_offset else weight
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + config.norm_eps) * scale


def inverse_frequencies(config, layer, head_size):
  """Rotation speed of feature pair k (k, k + Dh/2), per position, for `layer`."""
  window = config.layer_windows[layer] if config.layer_windows else 0
  local = bool(window) and config.rope_local_base > 0
  base = config.rope_local_base if local else config.rope_base
  half = head_size // 2
  freqs = []
  for k in range(half):
    f = base ** (-2.0 * k / head_size)
    if not local and config.rope_scaling == "linear":
      f = f / config.rope_factor
    elif not local and config.rope_scaling == "llama3":
      # Llama 3.1: wavelengths longer than original_len / low_freq_factor are stretched by `factor`, those
      # shorter than original_len / high_freq_factor kept, and in between mixed by how many wavelengths
      # fit the original context.
      wavelength = 2 * math.pi / f
      original = config.rope_original_max_len
      if wavelength < original / config.rope_high_freq_factor:
        pass
      elif wavelength > original / config.rope_low_freq_factor:
        f = f / config.rope_factor
      else:
        mix = ((original / wavelength - config.rope_low_freq_factor) /
               (config.rope_high_freq_factor - config.rope_low_freq_factor))
        f = (1 - mix) * f / config.rope_factor + mix * f
    freqs.append(f)
  return freqs


def rotate(x_THd, positions_T, freqs):
  """Rotate-half rotary embedding: feature k pairs with feature k + Dh/2, angle = position * freqs[k]."""
  half = len(freqs)
  angles_Th = np.outer(np.asarray(positions_T, np.float64), np.asarray(freqs, np.float64))
  cos, sin = np.cos(angles_Th)[:, None, :], np.sin(angles_Th)[:, None, :]
  a, b = x_THd[..., :half], x_THd[..., half:2 * half]
  return np.concatenate([a * cos - b * sin, b * cos + a * sin, x_THd[..., 2 * half:]], axis=-1)


def silu(x):
  return x / (1.0 + np.exp(-x))


def gelu_tanh(x):
  return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def cap(x, c):
  return c * np.tanh(x / c) if c else x


def attention(config, layer, q_THd, k_TGd, v_TGd, positions_T):
  """Causal in sequence order; on windowed layers a key must also lie within the window, by position."""
  num_tokens, num_heads, head_size = q_THd.shape
  num_kv = k_TGd.shape[1]
  window = config.layer_windows[layer] if config.layer_windows else 0
  scale = config.query_scale if config.query_scale else 1.0 / math.sqrt(head_size)
  positions = np.asarray(positions_T)
  index = np.arange(num_tokens)
  visible_TT = index[None, :] <= index[:, None]  # key s visible to query t
  if window:
    visible_TT &= (positions[:, None] - positions[None, :]) < window
  out = np.zeros_like(q_THd)
  for h in range(num_heads):
    g = h // (num_heads // num_kv)  # contiguous groups of query heads share a KV head
    scores_TT = cap(scale * (q_THd[:, h] @ k_TGd[:, g].T), config.attn_softcap)
    scores_TT = np.where(visible_TT, scores_TT, -np.inf)
    weights_TT = np.exp(scores_TT - scores_TT.max(-1, keepdims=True))
    weights_TT /= weights_TT.sum(-1, keepdims=True)
    out[:, h] = weights_TT @ v_TGd[:, g]
  return out


def dense(x, p, axes):
  """x @ kernel (+ bias), contracting x's last `axes` axes."""
  y = np.tensordot(x, p["kernel"], axes=axes)
  return y + p["bias"] if "bias" in p else y


def block(p, config, layer, x_TD, positions_T):
  normed = rms_norm(config, x_TD, p["attn_norm"]["scale"])
  if "qkv_proj" in p:
    qkv = dense(normed, p["qkv_proj"], 1)  # [T, 3, H, Dh]
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
  else:
    q = dense(normed, p["q_proj"], 1)       # [T, H, Dh]
    kv = dense(normed, p["kv_proj"], 1)     # [T, 2, G, Dh]
    k, v = kv[:, 0], kv[:, 1]
  if config.qk_norm:
    q = rms_norm(config, q, p["q_norm"]["scale"])
    k = rms_norm(config, k, p["k_norm"]["scale"])
  freqs = inverse_frequencies(config, layer, q.shape[-1])
  attended = attention(config, layer, rotate(q, positions_T, freqs), rotate(k, positions_T, freqs), v,
                       positions_T)
  out = dense(attended, p["out_proj"], 2)
  if config.sandwich_norms:
    out = rms_norm(config, out, p["post_attn_norm"]["scale"])
  x_TD = x_TD + out
  normed = rms_norm(config, x_TD, p["mlp_norm"]["scale"])
  gate_up = p["mlp"]["gate_up"]
  gate = normed @ gate_up["kernel"][:, 0] + (gate_up["bias"][0] if "bias" in gate_up else 0.0)
  up = normed @ gate_up["kernel"][:, 1] + (gate_up["bias"][1] if "bias" in gate_up else 0.0)
  activation = gelu_tanh if config.mlp_activation == "gelu_tanh" else silu
  hidden = dense(activation(gate) * up, p["mlp"]["down"], 1)
  if config.sandwich_norms:
    hidden = rms_norm(config, hidden, p["post_mlp_norm"]["scale"])
  return x_TD + hidden


def _layer_slice(tree, layer):
  if isinstance(tree, dict):
    return {name: _layer_slice(value, layer) for name, value in tree.items()}
  return np.asarray(tree)[layer]


def layer_outputs(params, config, x_TD, positions_T):
  """Every layer's output residual [T, D], first layer first."""
  x = np.asarray(x_TD, np.float64)
  outputs = []
  blocks = params["blocks"]
  if not isinstance(blocks, (list, tuple)):  # the model's layout: every array stacked on a layer axis
    blocks = [{name: _layer_slice(value, layer) for name, value in blocks.items()}
              for layer in range(config.num_layers)]
  for layer, block_params in enumerate(blocks):
    x = block(block_params, config, layer, x, positions_T)
    outputs.append(x)
  return outputs


def forward(params, config, x_TD, positions_T):
  return layer_outputs(params, config, x_TD, positions_T)[-1]


def logits(params, config, hidden_TD):
  normed = rms_norm(config, hidden_TD, params["final_norm"]["scale"])
  head = params["embed"].T if config.tie_embeddings else params["head"]
  real = cap(normed @ head, config.final_softcap)
  if config.max_pauses > 0:
    dk = normed @ params["dk_head"]["kernel"] + params["dk_head"]["bias"]
  else:
    dk = np.full(real.shape[:-1], -np.inf)
  return np.concatenate([real, dk[..., None]], axis=-1)


def reference_logits(params, config, x_TD, positions_T):
  return logits(params, config, forward(params, config, x_TD, positions_T))


def token_input(params, config, token):
  row = params["embed"][token]
  if config.embed_scale:
    # The scale is rounded to the compute dtype, as transformers rounds it to the weight dtype.
    factor = math.sqrt(config.width)
    if config.dtype == "bfloat16":
      import ml_dtypes  # pylint: disable=import-outside-toplevel
      factor = float(np.asarray(factor, ml_dtypes.bfloat16))
    else:
      factor = float(np.float32(factor))
    row = row * factor
  return row


def pause_input(params, config, token, step, prev_hidden=None):
  x = params["pause"]["embedding"] + params["pause"]["step_embedding"][step - 1]
  if config.pause_reads_token:
    x = x + token_input(params, config, token)
  if config.pause_feedback:
    x = x + rms_norm(config, prev_hidden, params["final_norm"]["scale"]) @ params["feedback"]["kernel"]
  return x


def private_rollout(params, config, tokens_N, num_pauses):
  """[N, K+1, V+1]: each (i, j) from its own causal run over x_0..x_i and pauses 1..j at position i."""
  out = []
  for i in range(len(tokens_N)):
    inputs = [token_input(params, config, t) for t in tokens_N[:i + 1]]
    positions = list(range(i + 1))
    outputs = layer_outputs(params, config, np.stack(inputs), positions)
    per_step = [logits(params, config, outputs[-1][-1])]
    for j in range(1, num_pauses + 1):
      # Growing one pause at a time lets pause j read run j-1's output (feedback: the last input's output
      # of layer pause_feedback_layer); without feedback re-running the whole sequence gives the same
      # thing, only slower.
      feedback = outputs[config.pause_feedback_layer][-1]
      inputs.append(pause_input(params, config, tokens_N[i], j, prev_hidden=feedback))
      positions.append(i)
      outputs = layer_outputs(params, config, np.stack(inputs), positions)
      per_step.append(logits(params, config, outputs[-1][-1]))
    out.append(np.stack(per_step))
  return np.stack(out)


def stream_rollout(params, config, tokens_N, num_pauses):
  """[N, K+1, V+1]: one causal pass with K pause slots after every real token, z_{i,j} at i(K+1)+j."""
  if config.pause_feedback:
    raise ValueError("stream pauses have no feedback")
  steps = num_pauses + 1
  inputs = []
  for token in tokens_N:
    inputs.append(token_input(params, config, token))
    inputs.extend(pause_input(params, config, token, j) for j in range(1, steps))
  hidden = forward(params, config, np.stack(inputs), list(range(len(inputs))))
  return logits(params, config, hidden).reshape(len(tokens_N), steps, -1)


def rollout(params, config, tokens_N, num_pauses):
  if config.pause_context == "stream":
    return stream_rollout(params, config, tokens_N, num_pauses)
  return private_rollout(params, config, tokens_N, num_pauses)


def batched_rollout(params, config, tokens_BN, num_pauses):
  """rollout over a batch: [B, N, K+1, V+1]."""
  params = to_numpy(params)
  return np.stack([rollout(params, config, np.asarray(row), num_pauses) for row in np.asarray(tokens_BN)])
