"""Tests for cyb_jax/pretrained/gguf_file.py: GGUF files (llama.cpp's format) as pretrained sources.

The oracle is the real `transformers` with the real `gguf` package: tests/fixtures/make_gguf_fixtures.py (run
by hand, with torch) wrote tiny random models of every supported family as GGUF files the way llama.cpp's
converter does (q/k rows permuted, Gemma norms as 1 + w, Llama 3 RoPE divisors as a tensor, the
tokenizer as metadata), each in its own quantization types (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and
the K-quants Q2_K..Q6_K), and saved the float32 logits transformers computes from its own reading of each
file, and its GGUF tokenizer's ids. For the real SmolLM2-135M file in ../shared/models the golden logits
are transformers' GGUF load of that file. Negative controls show that the two GGUF-specific bugs (rotary
permutation kept, Gemma norm offset kept) fail the comparison by far more than its tolerance.
"""

import json
import os
import subprocess
import sys

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyb_jax import model
from cyb_jax.data import tokenizer as tokenizer_lib
from cyb_jax.pretrained import gguf_file, load_hf_checkpoint, model_config_from_hf, read_pretrained_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "gguf")
MANIFEST = json.load(open(os.path.join(FIXTURES, "MANIFEST.json"), encoding="utf-8"))
NAMES = sorted(MANIFEST["fixtures"])
REAL = os.path.join(ROOT, "..", "shared", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
TOL = dict(rtol=1e-4, atol=1e-4)


def _file(name):
  return os.path.join(FIXTURES, name, "model.gguf")


def _golden(name):
  golden = np.load(os.path.join(FIXTURES, name, "golden.npz"))
  return golden["input_ids"].astype(np.int32), golden["logits"]


def _logits(config, params, tokens):
  fn = jax.jit(lambda p, t: model.rollout(p, t, config, 0)[..., 0, :config.vocab_size])
  return np.asarray(fn(params, jnp.asarray(tokens)))


def test_fixtures_cover_every_family_and_the_named_quantization_types():
  assert {MANIFEST["fixtures"][n]["arch"] for n in NAMES} == {"llama", "qwen2", "qwen3", "gemma2", "gemma3"}
  types = {t for n in NAMES for t in MANIFEST["fixtures"][n]["quantization"].values()}
  assert {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"} <= types


@pytest.mark.parametrize("name", NAMES)
def test_logits_equal_transformers(name):
  config, params = load_hf_checkpoint(_file(name))
  tokens, expected = _golden(name)
  assert config.max_pauses == 0 and config.vocab_size == expected.shape[-1]
  # Relative to the logits' scale: the random K-quant blocks give logits of size ~50.
  scale = max(1.0, float(np.abs(expected).max()))
  np.testing.assert_allclose(_logits(config, params, tokens), expected, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("name", NAMES)
def test_config_from_metadata_equals_the_true_config(name):
  """The ModelConfig read from the GGUF metadata is the one the model's own config.json gives."""
  true_hf = dict(MANIFEST["fixtures"][name]["hf_config"])
  assert model_config_from_hf(read_pretrained_config(_file(name))) == model_config_from_hf(true_hf)


@pytest.mark.parametrize("name,break_what", [("llama_q4", "permutation"), ("gemma3_q4_1", "norm_offset"),
                                             ("gemma2_q8", "norm_offset")])
def test_negative_controls_fail(name, break_what, monkeypatch):
  if break_what == "permutation":
    monkeypatch.setattr(gguf_file, "_unpermute_rotary", lambda weight, heads: weight)
  else:
    monkeypatch.setattr(gguf_file, "_gemma_norm_offset", lambda stored: stored)
  gguf_file._open.cache_clear()  # pylint: disable=protected-access
  try:
    config, params = load_hf_checkpoint(_file(name))
  finally:
    gguf_file._open.cache_clear()  # pylint: disable=protected-access
  tokens, expected = _golden(name)
  assert np.abs(_logits(config, params, tokens) - expected).max() > 1e-2


@pytest.mark.parametrize("name", [n for n in NAMES if os.path.isfile(os.path.join(FIXTURES, n, "golden.json"))])
def test_tokenizer_equals_transformers(name):
  golden = json.load(open(os.path.join(FIXTURES, name, "golden.json"), encoding="utf-8"))
  tokenizer = tokenizer_lib.make_tokenizer("hf", _file(name))
  ids = ([tokenizer.bos_id] if tokenizer.add_bos else []) + tokenizer.encode(golden["text"]).tolist()
  assert ids == golden["ids"]
  assert tokenizer.decode(ids) == golden["decoded"]


def test_unknown_architecture_pre_tokenizer_and_quantization_are_one_line_errors(tmp_path):
  def write(path, arch="llama", pre="smollm", qtype=gguf.GGMLQuantizationType.F32):
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(["a", "b"])
    data = np.zeros((2, 40), np.uint8) if qtype != gguf.GGMLQuantizationType.F32 else np.zeros((2, 32), np.float32)
    writer.add_tensor("token_embd.weight", data,
                      raw_dtype=None if qtype == gguf.GGMLQuantizationType.F32 else qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)

  with pytest.raises(ValueError, match=r"unsupported GGUF architecture 'gpt2'") as error:
    gguf_file.GGUFCheckpoint(write(tmp_path / "a.gguf", arch="gpt2"))
  assert "\n" not in str(error.value)
  with pytest.raises(ValueError, match=r"unknown pre-tokenizer tokenizer.ggml.pre='tekken-x'"):
    gguf_file.GGUFCheckpoint(write(tmp_path / "b.gguf", pre="tekken-x")).tokenizer_json()
  with pytest.raises(ValueError, match=r"quantization type Q8_1"):
    gguf_file.GGUFCheckpoint(write(tmp_path / "c.gguf", qtype=gguf.GGMLQuantizationType.Q8_1)).dequantized(
        "token_embd.weight")
  with pytest.raises(ValueError, match=r"GGUF metadata lacks 'llama.attention.head_count'"):
    gguf_file.GGUFCheckpoint(write(tmp_path / "d.gguf")).hf_config()


def test_convert_writes_a_hugging_face_directory_the_loader_reads_identically(tmp_path):
  name = "llama_q4"
  out = tmp_path / "hf"
  subprocess.run([sys.executable, "-m", "cyb_jax.pretrained.convert", _file(name), str(out)], check=True,
                 cwd=ROOT, capture_output=True, text=True)
  assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))
  config, params = load_hf_checkpoint(str(out))
  tokens, expected = _golden(name)
  np.testing.assert_allclose(_logits(config, params, tokens), expected, **TOL)
  golden = json.load(open(os.path.join(FIXTURES, name, "golden.json"), encoding="utf-8"))
  tokenizer = tokenizer_lib.make_tokenizer("hf", str(out))
  ids = ([tokenizer.bos_id] if tokenizer.add_bos else []) + tokenizer.encode(golden["text"]).tolist()
  assert ids == golden["ids"]


# ----------------------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct file (../shared/models, present for developers and CI).


@pytest.mark.skipif(not os.path.isfile(REAL), reason="../shared/models is not beside this checkout")
def test_real_smollm2_logits_and_tokenizer_equal_transformers():
  golden = np.load(os.path.join(FIXTURES, "smollm2_golden.npz"))
  expected_ids = json.load(open(os.path.join(FIXTURES, "smollm2_golden.json"), encoding="utf-8"))
  tokenizer = tokenizer_lib.make_tokenizer("hf", REAL)
  assert tokenizer.encode(expected_ids["passage"]).tolist() == golden["input_ids"].tolist()
  assert tokenizer.encode(expected_ids["text"]).tolist() == expected_ids["text_ids"]
  assert tokenizer.decode(expected_ids["text_ids"]) == expected_ids["decoded"]
  config, params = load_hf_checkpoint(REAL)
  assert (config.num_layers, config.width, config.num_heads, config.kv_heads, config.vocab_size) == (
      30, 576, 9, 3, 49152)
  logits = _logits(config, params, golden["input_ids"][None])[0]
  lse = jax.nn.logsumexp(logits, axis=-1)
  np.testing.assert_allclose(logits[:, golden["vocab_ids"]], golden["logits"], rtol=1e-4, atol=2e-4)
  np.testing.assert_allclose(lse, golden["logsumexp"], rtol=1e-4, atol=2e-4)
