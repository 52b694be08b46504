"""Eval of a `pause_context="stream"` model reports what inference does (DESIGN.md section 3): the policy's
pauses enter the stream only where it paused, with the training rollout's numbers labelled beside."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyb_jax import model as model_lib
from cyb_jax.evaluation import evaluate
from cyb_jax.inference import generate

CONFIG = model_lib.ModelConfig(vocab_size=11, width=12, num_layers=2, num_heads=2, mlp_hidden=14, max_len=64,
                               max_pauses=2, dk_init_prob=0.5, pause_context="stream")
K = 2
B, N = 3, 9


def _params(config):
  params = model_lib.init(config, jax.random.PRNGKey(2))
  # A <dk> direction, so d varies with the context and the threshold policy pauses on some tokens only.
  params["dk_head"]["kernel"] = 2.0 * jax.random.normal(jax.random.PRNGKey(102), (config.width,))
  return params


def _batch():
  stream = np.asarray(jax.random.randint(jax.random.PRNGKey(7), (B, N + 1), 0, CONFIG.vocab_size))
  mask = np.ones((B, N), bool)
  mask[:, :2] = False  # some positions carry no loss
  return {"inputs": stream[:, :-1].astype(np.int32), "targets": stream[:, 1:].astype(np.int32),
          "loss_mask": mask}


def _evaluate(config, params, policy):
  return evaluate.evaluate(params, [_batch()], config, K, policy=policy, tau=0.5)


def test_stream_headline_is_teacher_forced_inference_and_differs_from_the_rollout():
  params = _params(CONFIG)
  result = _evaluate(CONFIG, params, "threshold")
  assert result["context"] == "inference"
  # Independently: inference on the same text, read at each token's own stop, over the loss tokens.
  batch = _batch()
  tokens = np.concatenate([batch["inputs"][:, :1], batch["targets"]], axis=1)
  forced = generate.teacher_forced(params, tokens, CONFIG, num_pauses=K, policy="threshold", tau=0.5)
  stops = np.asarray(forced.pauses)
  nll = np.take_along_axis(np.asarray(forced.target_nll), stops[..., None], -1)[..., 0]
  mask = batch["loss_mask"]
  assert result["nll_policy"] == pytest.approx(float(nll[mask].mean()), rel=1e-6)
  assert result["mean_pauses"] == pytest.approx(float(stops[mask].mean()))
  assert result["pause_histogram"] == np.bincount(stops[mask], minlength=K + 1).tolist()
  assert 0 < result["mean_pauses"] < K  # the policy pauses on some tokens only
  # The training context (K pauses after every token) is reported beside it, and here it differs.
  training = result["training_context"]
  assert abs(training["nll_policy"] - result["nll_policy"]) > 1e-4


def test_stream_token_classes_count_inference_pauses():
  """By-class tables follow the headline context: a stand-in classifier (class 0: even target ids,
  class 1: ids >= 5) against the inference stops themselves."""
  params = _params(CONFIG)

  def classifier(targets_BN):
    return np.stack([targets_BN % 2 == 0, targets_BN >= 5], axis=-1)

  result = evaluate.evaluate(params, [_batch()], CONFIG, K, policy="threshold", tau=0.5,
                             token_classifier=classifier)
  batch = _batch()
  tokens = np.concatenate([batch["inputs"][:, :1], batch["targets"]], axis=1)
  stops = np.asarray(generate.teacher_forced(params, tokens, CONFIG, num_pauses=K, policy="threshold",
                                             tau=0.5).pauses)
  mask, targets = batch["loss_mask"], batch["targets"]
  names = evaluate.token_classes.CLASSES
  for name, member in ((names[0], targets % 2 == 0), (names[1], targets >= 5)):
    chosen = member & mask
    assert result["by_token_class"][name]["tokens"] == int(chosen.sum())
    assert result["by_token_class"][name]["mean_pauses"] == pytest.approx(float(stops[chosen].mean()))
    assert result["by_token_class"][name]["pause_rate"] == pytest.approx(float((stops[chosen] > 0).mean()))
  assert set(result["by_token_class"]) == set(names[:2])  # the other classes have no tokens
  assert sum(row["tokens"] for row in result["by_step0_entropy"].values()) == int(mask.sum())


def test_stream_word_analysis_counts_inference_pauses():
  """The word analysis follows the headline context too: with a stand-in text (token t reads " w<t>",
  tagged as a plural noun when t is even, a verb otherwise), its rates are those of the inference stops,
  before (position i) and after (position i + 1) each token."""
  from cyb_jax.evaluation import word_analysis  # pylint: disable=g-import-not-at-top

  def tagger(texts):
    return [[(m.start(), m.end(), "NNS" if int(m.group()[1:]) % 2 == 0 else "VB", "")
             for m in re.finditer(r"w\d+", t)] for t in texts]

  analyzer = word_analysis.Analyzer(lambda ids: [f" w{int(t)}" for t in ids], tagger, ())
  params = _params(CONFIG)
  result = evaluate.evaluate(params, [_batch()], CONFIG, K, policy="threshold", tau=0.5, word_analyzer=analyzer)
  batch = _batch()
  tokens = np.concatenate([batch["inputs"][:, :1], batch["targets"]], axis=1)
  stops = np.asarray(generate.teacher_forced(params, tokens, CONFIG, num_pauses=K, policy="threshold",
                                             tau=0.5).pauses)
  mask, targets = batch["loss_mask"], batch["targets"]
  table = result["word_analysis"]["by_part_of_speech"]
  after_mask = mask[:, :-1] & mask[:, 1:]
  for group, member in (("plural noun", targets % 2 == 0), ("verb", targets % 2 == 1)):
    before, after = member & mask, member[:, :-1] & after_mask
    assert table[group]["before"]["paused"] == int((stops[before] > 0).sum())
    assert table[group]["before"]["tokens"] == int(before.sum())
    assert table[group]["after"]["paused"] == int((stops[:, 1:][after] > 0).sum())
  overall = result["word_analysis"]["overall"]["before"]
  assert overall["paused"] == int((stops[mask] > 0).sum())
  # Here both contexts pause on as many tokens, but not as often: the mean tells them apart.
  assert overall["mean_pauses"] == pytest.approx(result["mean_pauses"])
  assert overall["mean_pauses"] != pytest.approx(result["training_context"]["mean_pauses"])


def test_stream_with_policy_always_agrees_in_both_contexts():
  result = _evaluate(CONFIG, _params(CONFIG), "always")
  assert result["mean_pauses"] == K and result["training_context"]["mean_pauses"] == K
  assert result["nll_policy"] == pytest.approx(result["training_context"]["nll_policy"], abs=1e-5)
  assert result["accuracy"] == result["training_context"]["accuracy"]


def test_private_chains_have_one_context():
  config = dataclasses.replace(CONFIG, pause_context="private")
  result = _evaluate(config, _params(config), "threshold")
  assert result["context"] == "rollout" and "training_context" not in result


def test_stream_on_packed_rows_reports_the_rollout_and_says_so():
  batch = {**_batch(), "segment_ids": np.ones((B, N), np.int32)}
  result = evaluate.evaluate(_params(CONFIG), [batch], CONFIG, K, policy="threshold", tau=0.5)
  assert result["context"] == "rollout" and "training_context" not in result
  assert "packed rows" in result["context_note"]
