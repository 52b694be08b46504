"""A slow, plain-numpy float64 transformer that reads cyb_jax's params pytree: the test oracle.

It follows DESIGN.md section 3 literally and never calls cyb_jax. A pause chain is not a fused scan here:
z_{i,j} is the last output of an ordinary causal transformer run on `x_0 .. x_i, <pause>_1 .. <pause>_j`,
every pause at rotary position i; with feedback the sequence grows one pause at a time. The stream variant
is one causal pass over N(K+1) inputs at positions 0 .. N(K+1)-1.

`config` is anything with the ModelConfig fields `num_heads`, `rope_base`, `max_pauses`,
`pause_reads_token` and `pause_feedback`; every size is read off the params.

API (all numpy float64):
  to_numpy(params)                                      -> the params pytree as float64 numpy arrays
  forward(params, config, x_TD, positions_T)            -> final residual [T, D] (before the final norm)
  logits(params, config, hidden_TD)                     -> [T, V+1], `<dk>` last (-inf if max_pauses = 0)
  reference_logits(params, config, x_TD, positions_T)   -> logits(forward(...))
  pause_input(params, config, token, step, prev_hidden) -> [D], step is 1-based
  rollout(params, config, tokens_N, num_pauses)         -> [N, K+1, V+1] for config.pause_context
"""

from __future__ import annotations

import math

import numpy as np

EPS = 1e-6


def to_numpy(params):
  if isinstance(params, dict):
    return {key: to_numpy(value) for key, value in params.items()}
  if isinstance(params, (list, tuple)):
    return [to_numpy(value) for value in params]
  return np.asarray(params, dtype=np.float64)


def rms_norm(x, scale):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * scale


def rotate(x_THd, positions_T, base):
  """Rotate-half rotary embedding: feature k pairs with feature k + Dh/2, angle = position * base^(-k/half)."""
  half = x_THd.shape[-1] // 2
  out = np.empty_like(x_THd)
  for t, position in enumerate(positions_T):
    for k in range(half):
      angle = position * base ** (-k / half)
      c, s = math.cos(angle), math.sin(angle)
      a, b = x_THd[t, :, k], x_THd[t, :, k + half]
      out[t, :, k] = a * c - b * s
      out[t, :, k + half] = b * c + a * s
  return out


def silu(x):
  return x / (1.0 + np.exp(-x))


def attention(q_THd, k_THd, v_THd):
  """Causal in sequence order: query t sees keys 0..t."""
  num_tokens, num_heads, head_dim = q_THd.shape
  out = np.zeros_like(q_THd)
  for h in range(num_heads):
    for t in range(num_tokens):
      scores = np.array([q_THd[t, h] @ k_THd[s, h] for s in range(t + 1)]) / math.sqrt(head_dim)
      weights = np.exp(scores - scores.max())
      weights /= weights.sum()
      out[t, h] = sum(weights[s] * v_THd[s, h] for s in range(t + 1))
  return out


def block(p, config, x_TD, positions_T):
  normed = rms_norm(x_TD, p["attn_norm"]["scale"])
  qkv = np.einsum("td,dchk->tchk", normed, p["qkv_proj"]["kernel"])
  q = rotate(qkv[:, 0], positions_T, config.rope_base)
  k = rotate(qkv[:, 1], positions_T, config.rope_base)
  attended = attention(q, k, qkv[:, 2])
  x_TD = x_TD + np.einsum("thk,hkd->td", attended, p["out_proj"]["kernel"])
  normed = rms_norm(x_TD, p["mlp_norm"]["scale"])
  gate = normed @ p["mlp"]["gate_up"]["kernel"][:, 0]
  up = normed @ p["mlp"]["gate_up"]["kernel"][:, 1]
  return x_TD + (silu(gate) * up) @ p["mlp"]["down"]["kernel"]


def forward(params, config, x_TD, positions_T):
  x = np.asarray(x_TD, np.float64)
  for block_params in params["blocks"]:
    x = block(block_params, config, x, positions_T)
  return x


def logits(params, config, hidden_TD):
  normed = rms_norm(hidden_TD, params["final_norm"]["scale"])
  real = normed @ params["head"]
  if config.max_pauses > 0:
    dk = normed @ params["dk_head"]["kernel"] + params["dk_head"]["bias"]
  else:
    dk = np.full(real.shape[:-1], -np.inf)
  return np.concatenate([real, dk[..., None]], axis=-1)


def reference_logits(params, config, x_TD, positions_T):
  return logits(params, config, forward(params, config, x_TD, positions_T))


def pause_input(params, config, token, step, prev_hidden=None):
  x = params["pause"]["embedding"] + params["pause"]["step_embedding"][step - 1]
  if config.pause_reads_token:
    x = x + params["embed"][token]
  if config.pause_feedback:
    x = x + rms_norm(prev_hidden, params["final_norm"]["scale"]) @ params["feedback"]["kernel"]
  return x


def private_rollout(params, config, tokens_N, num_pauses):
  """[N, K+1, V+1]: each (i, j) from its own causal run over x_0..x_i and pauses 1..j at position i."""
  out = []
  for i in range(len(tokens_N)):
    inputs = [params["embed"][t] for t in tokens_N[:i + 1]]
    positions = list(range(i + 1))
    hidden = forward(params, config, np.stack(inputs), positions)
    per_step = [logits(params, config, hidden[-1])]
    for j in range(1, num_pauses + 1):
      # Growing one pause at a time lets pause j read run j-1's output (feedback); without feedback
      # re-running the whole sequence gives the same thing, only slower.
      inputs.append(pause_input(params, config, tokens_N[i], j, prev_hidden=hidden[-1]))
      positions.append(i)
      hidden = forward(params, config, np.stack(inputs), positions)
      per_step.append(logits(params, config, hidden[-1]))
    out.append(np.stack(per_step))
  return np.stack(out)


def stream_rollout(params, config, tokens_N, num_pauses):
  """[N, K+1, V+1]: one causal pass with K pause slots after every real token, z_{i,j} at i(K+1)+j."""
  if config.pause_feedback:
    raise ValueError("stream pauses have no feedback")
  steps = num_pauses + 1
  inputs = []
  for token in tokens_N:
    inputs.append(params["embed"][token])
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
