"""Tests for cyb_jax/pretrained: loading Hugging Face checkpoints (no torch here).

The oracle is the real `transformers` library: tests/fixtures/make_hf_fixtures.py (run by hand, with torch)
built tiny random models of every supported family, in both config.json forms, one index-sharded and one
stored in bfloat16, with weights of std 0.1 and randomised norms and biases, and saved the float32 logits
transformers computed on a 40-token prompt (longer than every sliding window) in each `golden.npz`.
Negative controls show that each classic loader bug would fail the comparison by far more than its
tolerance.
"""

import dataclasses
import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from cyb_jax import model
from cyb_jax.model.transformer import stack_blocks, unstack_blocks
from cyb_jax.parallel import sharding
from cyb_jax.pretrained import load_hf_checkpoint, model_config_from_hf, read_hf_config, sharded_place

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf")
NAMES = sorted(os.path.basename(d) for d in glob.glob(os.path.join(FIXTURES, "*")))
TOL = dict(rtol=1e-4, atol=1e-4)


def _dir(name):
  return os.path.join(FIXTURES, name)


def _golden(name):
  golden = np.load(os.path.join(_dir(name), "golden.npz"))
  return golden["input_ids"].astype(np.int32), golden["logits"]


def _logits(config, params, tokens):
  fn = jax.jit(lambda p, t: model.rollout(p, t, config, 0)[..., 0, :config.vocab_size])
  return np.asarray(fn(params, jnp.asarray(tokens)))


def test_every_family_is_covered():
  families = {read_hf_config(_dir(name))["model_type"] for name in NAMES}
  assert families == {"llama", "qwen2", "qwen3", "gemma2", "gemma3_text"}


@pytest.mark.parametrize("name", NAMES)
def test_logits_equal_transformers(name):
  config, params = load_hf_checkpoint(_dir(name))
  tokens, expected = _golden(name)
  assert config.max_pauses == 0 and config.vocab_size == expected.shape[-1]
  logits = _logits(config, params, tokens)
  np.testing.assert_allclose(logits, expected, **TOL)


# ----------------------------------------------------------------------------------------------------------
# Negative controls: a loader with one classic bug gives logits far outside the tolerance.


def _wrong_kv_grouping(config, params):
  """Query head h reading KV head h % G instead of h // (H / G): swap query heads 1 and 2 (and o rows)."""
  assert config.num_heads == 4 and config.kv_heads == 2
  order = np.array([0, 2, 1, 3])
  blocks = [{**b, "q_proj": {**b["q_proj"], "kernel": b["q_proj"]["kernel"][:, order]},
             "out_proj": {**b["out_proj"], "kernel": b["out_proj"]["kernel"][order]}}
            for b in unstack_blocks(params["blocks"])]
  if "bias" in blocks[0]["q_proj"]:
    blocks = [{**b, "q_proj": {**b["q_proj"], "bias": b["q_proj"]["bias"][order]}} for b in blocks]
  return config, {**params, "blocks": stack_blocks(blocks)}


def _swapped_gate_up(config, params):
  blocks = [{**b, "mlp": {**b["mlp"], "gate_up": {**b["mlp"]["gate_up"],
                                                  "kernel": b["mlp"]["gate_up"]["kernel"][:, ::-1]}}}
            for b in unstack_blocks(params["blocks"])]
  return config, {**params, "blocks": stack_blocks(blocks)}


def _missing_norm_offset(config, params):
  return dataclasses.replace(config, norm_offset=False), params


def _meta_qk_permutation(config, params):
  """Applying Meta's interleaved-to-halves q/k permutation on top of HF's already permuted weights."""
  order = np.concatenate([np.arange(0, config.head_size, 2), np.arange(1, config.head_size, 2)])
  blocks = [{**b, "q_proj": {**b["q_proj"], "kernel": b["q_proj"]["kernel"][..., order]},
             "kv_proj": {**b["kv_proj"], "kernel": b["kv_proj"]["kernel"].at[:, 0].set(
                 b["kv_proj"]["kernel"][:, 0][..., order])}}
            for b in unstack_blocks(params["blocks"])]
  return config, {**params, "blocks": stack_blocks(blocks)}


@pytest.mark.parametrize("name,bug", [
    ("llama_linear_sharded", _wrong_kv_grouping),
    ("qwen3", _wrong_kv_grouping),
    ("llama_linear_sharded", _swapped_gate_up),
    ("gemma2", _swapped_gate_up),
    ("gemma2", _missing_norm_offset),
    ("gemma3_text_v4", _missing_norm_offset),
    ("llama_linear_sharded", _meta_qk_permutation),
])
def test_classic_loader_bugs_fail_the_comparison(name, bug):
  config, params = load_hf_checkpoint(_dir(name))
  tokens, expected = _golden(name)
  bad_config, bad_params = bug(config, params)
  error = np.abs(_logits(bad_config, bad_params, tokens) - expected).max()
  assert error > 1e-2, error  # a hundred times the tolerance of test_logits_equal_transformers


# ----------------------------------------------------------------------------------------------------------
# config.json in both forms.


def test_gemma3_config_forms_are_read_alike():
  # The same family in the 5.x form (nested rope_parameters, layer_types) and the 4.x form
  # (rope_theta, rope_local_base_freq, rope_scaling, sliding_window_pattern), read as transformers does.
  for name in ("gemma3_text", "gemma3_text_v4"):
    config = model_config_from_hf(read_hf_config(_dir(name)))
    assert config.layer_windows == (8, 8, 0, 8, 8, 0), name
    assert (config.rope_base, config.rope_local_base) == (1e6, 1e4), name
    assert (config.rope_scaling, config.rope_factor) == ("linear", 2.0), name
    assert config.norm_offset and config.sandwich_norms and config.embed_scale and config.qk_norm
    assert config.tie_embeddings and config.mlp_activation == "gelu_tanh"
    np.testing.assert_allclose(config.query_scale, 24 ** -0.5)
    assert config.attn_softcap == 0.0  # Gemma 3 never soft-caps attention scores


def test_llama_config_in_4x_form_gives_the_same_model(tmp_path):
  # Rewrite the 5.x-form llama3 config by hand in the 4.x form: the model must not change.
  hf = read_hf_config(_dir("llama_llama3rope"))
  rope = dict(hf.pop("rope_parameters"))
  hf["rope_theta"] = rope.pop("rope_theta")
  hf["rope_scaling"] = rope
  hf["torch_dtype"] = hf.pop("dtype", "float32")
  assert model_config_from_hf(hf) == model_config_from_hf(read_hf_config(_dir("llama_llama3rope")))
  assert model_config_from_hf(hf).rope_scaling == "llama3"


def test_qwen_sliding_window_that_is_off_stays_off():
  hf = read_hf_config(_dir("qwen2_bf16"))
  assert hf["sliding_window"] and not hf["use_sliding_window"]
  assert model_config_from_hf(hf).layer_windows == ()
  on = model_config_from_hf({**hf, "use_sliding_window": True, "layer_types": None, "max_window_layers": 1})
  assert on.layer_windows == (0,) + (hf["sliding_window"],) * (hf["num_hidden_layers"] - 1)


def test_config_defaults_of_each_family():
  base = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128,
              vocab_size=100)
  assert model_config_from_hf({**base, "model_type": "llama"}).head_size == 16
  assert model_config_from_hf({**base, "model_type": "qwen3"}).head_size == 128
  gemma2 = model_config_from_hf({**base, "model_type": "gemma2"})
  assert gemma2.head_size == 256 and (gemma2.attn_softcap, gemma2.final_softcap) == (50.0, 30.0)
  assert gemma2.layer_windows == (4096, 0) and gemma2.tie_embeddings  # even layers slide, 4096 by default
  gemma2_windowed = model_config_from_hf({**base, "model_type": "gemma2", "sliding_window": 512})
  assert gemma2_windowed.layer_windows == (512, 0)
  qwen2 = model_config_from_hf({**base, "model_type": "qwen2", "attention_bias": False})
  assert qwen2.qkv_bias and not qwen2.out_bias  # Qwen2 always has q, k, v biases, never o
  # null soft-caps are off (only an absent key takes the default).
  uncapped = model_config_from_hf({**base, "model_type": "gemma2", "attn_logit_softcapping": None,
                                   "final_logit_softcapping": None})
  assert (uncapped.attn_softcap, uncapped.final_softcap) == (0.0, 0.0)
  # Qwen's sliding layers start at max_window_layers, 28 when absent; the window is 4096 when absent.
  deep = {**base, "num_hidden_layers": 30, "model_type": "qwen2", "use_sliding_window": True}
  assert model_config_from_hf(deep).layer_windows == (0,) * 28 + (4096, 4096)
  # Absent max_position_embeddings: each family's own default.
  assert model_config_from_hf({**base, "model_type": "gemma3_text"}).max_len == 131072
  assert model_config_from_hf({**base, "model_type": "llama"}).max_len == 2048
  # 5.x nested rope_parameters without a theta fall back to the top-level keys.
  nested = {**base, "model_type": "gemma3_text", "rope_theta": 5e5, "rope_local_base_freq": 5000.0,
            "sliding_window_pattern": 2, "rope_parameters": {"full_attention": {"rope_type": "default"},
                                                             "sliding_attention": {"rope_type": "default"}}}
  assert (model_config_from_hf(nested).rope_base, model_config_from_hf(nested).rope_local_base) == (5e5, 5000.0)


# ----------------------------------------------------------------------------------------------------------
# Errors, each before any weight is used.


@pytest.mark.parametrize("changes,match", [
    (dict(model_type="gpt2"), "unsupported model_type 'gpt2'"),
    (dict(model_type="gpt_neox"), "unsupported model_type 'gpt_neox'"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "unsupported RoPE type 'yarn'"),
    (dict(rope_scaling={"type": "dynamic", "factor": 2.0}), "unsupported RoPE type 'dynamic'"),
    (dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
    (dict(hidden_act="relu"), "unsupported activation 'relu'"),
])
def test_unsupported_configs_are_named(tmp_path, changes, match):
  directory = _copy("llama_linear_sharded", tmp_path)
  _edit_config(directory, **changes)
  with pytest.raises(ValueError, match=match):
    load_hf_checkpoint(directory)


def test_multimodal_gemma3_is_refused_with_a_pointer():
  with pytest.raises(ValueError, match="gemma3_text"):
    model_config_from_hf({"model_type": "gemma3", "text_config": {}})


def _copy(name, tmp_path):
  directory = str(tmp_path / name)
  shutil.copytree(_dir(name), directory)
  return directory


def _edit_config(directory, **changes):
  path = os.path.join(directory, "config.json")
  with open(path, encoding="utf-8") as f:
    hf = json.load(f)
  hf.update(changes)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(hf, f)


def _edit_tensors(directory, edit):
  path = os.path.join(directory, "model.safetensors")
  tensors = load_file(path)
  edit(tensors)
  save_file(tensors, path)


def test_unmapped_tensor_is_named(tmp_path):
  directory = _copy("qwen3", tmp_path)
  _edit_tensors(directory, lambda t: t.update({"model.layers.0.self_attn.extra_proj.weight":
                                               np.zeros((4, 4), np.float32)}))
  with pytest.raises(ValueError, match=r"unmapped.*model.layers.0.self_attn.extra_proj.weight"):
    load_hf_checkpoint(directory)


def test_rotary_buffers_of_old_checkpoints_are_not_parameters(tmp_path):
  directory = _copy("qwen3", tmp_path)
  _edit_tensors(directory, lambda t: t.update({"model.layers.0.self_attn.rotary_emb.inv_freq":
                                               np.ones((8,), np.float32)}))
  config, params = load_hf_checkpoint(directory)
  tokens, expected = _golden("qwen3")
  np.testing.assert_allclose(_logits(config, params, tokens), expected, **TOL)


def test_missing_tensor_is_named(tmp_path):
  directory = _copy("qwen3", tmp_path)
  _edit_tensors(directory, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(ValueError, match=r"model.layers.1.mlp.up_proj.weight.*missing"):
    load_hf_checkpoint(directory)


def test_shape_mismatch_is_named(tmp_path):
  # head_dim 8 instead of 16 would still reshape some tensors; the shape check catches it first.
  directory = _copy("qwen3", tmp_path)
  _edit_config(directory, head_dim=8)
  with pytest.raises(ValueError, match=r"model.layers.0.self_attn.q_proj.weight.*shape"):
    load_hf_checkpoint(directory)


def test_tied_head_copy_must_equal_the_embedding(tmp_path):
  directory = _copy("qwen2_bf16", tmp_path)
  _edit_tensors(directory, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"]}))
  load_hf_checkpoint(directory)  # an exact duplicate of the tied table is accepted
  _edit_tensors(directory, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"] * 2}))
  with pytest.raises(ValueError, match="lm_head.weight differs"):
    load_hf_checkpoint(directory)


def test_a_tied_table_stored_only_as_lm_head_loads(tmp_path):
  """A de-duplicated tied export (transformers#38870) keeps the shared table under the head's name only; the
  model is the same, so transformers' golden logits of the original checkpoint hold."""
  directory = _copy("qwen2_bf16", tmp_path)
  _edit_tensors(directory, lambda t: t.update({"lm_head.weight": t.pop("model.embed_tokens.weight")}))
  config, params = load_hf_checkpoint(directory)
  tokens, expected = _golden("qwen2_bf16")
  np.testing.assert_allclose(_logits(config, params, tokens), expected, **TOL)


def test_keys_without_the_model_prefix_load(tmp_path):
  """A base-model export (`LlamaModel.save_pretrained`: `layers.0...`, `embed_tokens.weight`, `norm.weight`)
  of a tied model is the same weights."""
  directory = _copy("llama_llama3rope", tmp_path)
  _edit_tensors(directory, lambda t: t.update(
      {name[len("model."):]: t.pop(name) for name in [n for n in t if n.startswith("model.")]}))
  config, params = load_hf_checkpoint(directory)
  tokens, expected = _golden("llama_llama3rope")
  np.testing.assert_allclose(_logits(config, params, tokens), expected, **TOL)


def test_missing_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_hf_checkpoint(str(tmp_path))
  directory = _copy("qwen3", tmp_path)
  os.remove(os.path.join(directory, "model.safetensors"))
  open(os.path.join(directory, "pytorch_model.bin"), "wb").close()
  with pytest.raises(FileNotFoundError, match=r"model.safetensors.*pytorch_model.bin"):
    load_hf_checkpoint(directory)


def test_index_names_exactly_the_files_read(tmp_path):
  # Hub repos also carry other weight files (original/, consolidated.safetensors): only the index counts.
  directory = _copy("llama_linear_sharded", tmp_path)
  save_file({"junk": np.zeros((3,), np.float32)}, os.path.join(directory, "consolidated.safetensors"))
  config, params = load_hf_checkpoint(directory)
  tokens, expected = _golden("llama_linear_sharded")
  np.testing.assert_allclose(_logits(config, params, tokens), expected, **TOL)


# ----------------------------------------------------------------------------------------------------------
# Placement and the pause model built on a loaded checkpoint.


def test_parameters_are_placed_on_their_fsdp_shardings_as_converted():
  mesh = sharding.make_mesh(data=1, fsdp=8)
  placed = []

  def by_path(path, shape):
    placed.append(path)
    return jax.sharding.NamedSharding(mesh, sharding.param_spec(path, shape, 8))

  config, params = load_hf_checkpoint(_dir("gemma2"), place=sharded_place(by_path))
  assert len(placed) == len(jax.tree.leaves(params))
  kernels = [leaf for leaf in jax.tree.leaves(params) if leaf.ndim >= 2 and leaf.size >= 1024]
  assert kernels and all(not leaf.sharding.is_fully_replicated for leaf in kernels)
  tokens, expected = _golden("gemma2")
  np.testing.assert_allclose(_logits(config, params, tokens), expected, **TOL)


@pytest.mark.parametrize("name", ["llama_llama3rope", "gemma3_text"])
def test_pause_model_on_a_pretrained_checkpoint_keeps_its_step0(name):
  config, params = load_hf_checkpoint(_dir(name))
  tokens, expected = _golden(name)
  pause_config = dataclasses.replace(config, max_pauses=2, pause_feedback=True)
  extended = model.extend_params(params, pause_config, jax.random.key(0))
  logits = np.asarray(jax.jit(lambda p, t: model.rollout(p, t, pause_config, 2))(extended, jnp.asarray(tokens)))
  np.testing.assert_allclose(logits[:, :, 0, :config.vocab_size], expected, **TOL)
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("name", ["gemma3_text", "gemma2"])
def test_generation_of_a_pretrained_plain_lm_uses_its_kv_cache_and_windows(name):
  # A plain LM (no pause parameters) generating past its sliding window (8 positions): the cache must give
  # the logits a full rollout of the generated text gives, and the first step equals transformers'.
  from cyb_jax.inference import generate  # pylint: disable=import-outside-toplevel
  config, params = load_hf_checkpoint(_dir(name))
  tokens, expected = _golden(name)
  prompt = jnp.asarray(tokens[:, :20])
  out = generate.generate(params, prompt, config, num_tokens=12, policy="never", return_logits=True)
  assert int(np.asarray(out.pauses).max()) == 0
  step_logits = np.asarray(out.step_logits)[:, :, 0, :config.vocab_size]
  np.testing.assert_allclose(step_logits[:, 0], expected[:, 19], **TOL)
  sequence = jnp.concatenate([prompt, out.tokens[:, :-1]], axis=1)
  rollout_logits = _logits(config, params, np.asarray(sequence))[:, 19:]
  np.testing.assert_allclose(step_logits, rollout_logits, rtol=1e-5, atol=2e-5)
  np.testing.assert_array_equal(np.asarray(out.tokens), rollout_logits.argmax(-1))
