"""Evaluation metrics of DESIGN.md section 7, streamed over batches.

`token_metrics` (jitted per model) turns one batch into per-token arrays; `EvalAccumulator` folds them
into running sums on the host, so an eval set of any size needs memory for one batch plus the step-0
`<dk>` scores kept for the AUROC (one float per token).
"""

from __future__ import annotations

import functools
from typing import Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cyb_jax import losses
from cyb_jax import model as model_lib
from cyb_jax import policies
from cyb_jax.data import example as example_lib


@functools.partial(jax.jit, static_argnames=("config", "num_pauses", "policy"))
def token_metrics(params, inputs_BN, targets_BN, mask_BN, *, config: model_lib.ModelConfig,
                  num_pauses: int, policy: str, tau: float = 0.5, q: float = 0.5) -> dict:
  """Per-token quality at every step and under `policy`.

  Returns arrays `[B, N]`: stop (steps paused by the policy), nll_policy, correct_policy, nll_marginal,
  log_dk0 (log d_0, the step-0 `<dk>` log-probability); and `[B, N, S]`: nll_at_step, correct_at_step,
  halt (the halting distribution h_j).
  """
  vocab = config.vocab_size

  def readout(hidden_BND, step):
    del step
    logits_BNV = model_lib.output_logits(params, hidden_BND, config)
    stats = losses.step_stats(logits_BNV[:, :, None], targets_BN, mask_BN)
    correct_BN = jnp.argmax(logits_BNV[..., :vocab], axis=-1) == targets_BN
    return jax.tree.map(lambda x: x[..., 0], stats), correct_BN

  stats, correct_BNS = model_lib.rollout_readout(params, inputs_BN, config, num_pauses, None, readout)
  halting = losses.halting(stats)
  # The policies read log d from the full V+1 softmax, which is what the rollout's dk logit gives.
  log_d_BNS = stats.dk_logit - jnp.logaddexp(stats.vocab_lse, stats.dk_logit)
  stop_BN = policies.stop_steps_from_log_dk(policy, log_d_BNS, tau=tau, q=q)
  pick = lambda x: jnp.take_along_axis(x, stop_BN[..., None], axis=-1)[..., 0]
  return {
      "stop": stop_BN,
      "nll_policy": -pick(halting.log_answer),
      "correct_policy": pick(correct_BNS),
      "nll_marginal": losses.cyb_ap(stats, gamma=1.0, omega=0.0),
      "log_dk0": log_d_BNS[..., 0],
      "nll_at_step": -halting.log_answer,
      "correct_at_step": correct_BNS,
      "halt": jnp.exp(halting.log_halt),
  }


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
  """Area under the ROC curve of `scores` for `positives` (ties count half); NaN if a class is empty."""
  scores = np.asarray(scores, np.float64)
  positives = np.asarray(positives, bool)
  num_pos, num_neg = int(positives.sum()), int((~positives).sum())
  if num_pos == 0 or num_neg == 0:
    return float("nan")
  # Mann-Whitney U from average ranks.
  unique, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  upper_rank = np.cumsum(counts)
  average_rank = upper_rank - (counts - 1) / 2.0
  ranks = average_rank[inverse]
  u_stat = ranks[positives].sum() - num_pos * (num_pos + 1) / 2.0
  return float(u_stat / (num_pos * num_neg))


class EvalAccumulator:
  """Running sums of `token_metrics` over unmasked tokens, overall and per difficulty label."""

  def __init__(self, num_steps: int, difficulty_names: Optional[dict] = None):
    self.num_steps = num_steps
    self.difficulty_names = dict(difficulty_names or {})
    self.tokens = 0
    self.sums = {"nll_policy": 0.0, "correct_policy": 0.0, "pauses": 0.0, "nll_marginal": 0.0}
    self.nll_at_step = np.zeros(num_steps)
    self.correct_at_step = np.zeros(num_steps)
    self.halt = np.zeros(num_steps)
    self.pause_histogram = np.zeros(num_steps, np.int64)
    self.by_difficulty: dict[int, dict] = {}
    self._dk_scores: list[np.ndarray] = []
    self._step0_wrong: list[np.ndarray] = []

  def add(self, metrics: dict, mask_BN: np.ndarray, difficulty_BN: Optional[np.ndarray] = None) -> None:
    metrics = jax.device_get(metrics)
    mask = np.asarray(mask_BN, bool)
    count = int(mask.sum())
    if count == 0:
      return
    self.tokens += count
    stop = np.asarray(metrics["stop"])[mask]
    self.sums["nll_policy"] += float(np.asarray(metrics["nll_policy"], np.float64)[mask].sum())
    self.sums["correct_policy"] += float(np.asarray(metrics["correct_policy"])[mask].sum())
    self.sums["pauses"] += float(stop.sum())
    self.sums["nll_marginal"] += float(np.asarray(metrics["nll_marginal"], np.float64)[mask].sum())
    self.nll_at_step += np.asarray(metrics["nll_at_step"], np.float64)[mask].sum(0)
    correct_at_step = np.asarray(metrics["correct_at_step"])[mask]
    self.correct_at_step += correct_at_step.sum(0)
    self.halt += np.asarray(metrics["halt"], np.float64)[mask].sum(0)
    self.pause_histogram += np.bincount(stop, minlength=self.num_steps)[:self.num_steps]
    self._dk_scores.append(np.asarray(metrics["log_dk0"], np.float32)[mask])
    self._step0_wrong.append(~correct_at_step[:, 0])
    if difficulty_BN is not None:
      labels = np.asarray(difficulty_BN)[mask]
      correct_policy = np.asarray(metrics["correct_policy"])[mask]
      for label in np.unique(labels):
        rows = labels == label
        entry = self.by_difficulty.setdefault(int(label), {
            "tokens": 0, "pauses": 0.0, "paused": 0, "correct_policy": 0,
            "correct_at_step": np.zeros(self.num_steps)})
        entry["tokens"] += int(rows.sum())
        entry["pauses"] += float(stop[rows].sum())
        entry["paused"] += int((stop[rows] > 0).sum())
        entry["correct_policy"] += int(correct_policy[rows].sum())
        entry["correct_at_step"] += correct_at_step[rows].sum(0)

  def _label_name(self, label: int) -> str:
    return str(self.difficulty_names.get(label, label))

  def result(self) -> dict:
    """The metrics as plain Python numbers and lists (JSON-ready)."""
    n = max(self.tokens, 1)
    out = {
        "num_tokens": self.tokens,
        "nll_policy": self.sums["nll_policy"] / n,
        "accuracy": self.sums["correct_policy"] / n,
        "mean_pauses": self.sums["pauses"] / n,
        "nll_marginal": self.sums["nll_marginal"] / n,
        "nll_at_step": (self.nll_at_step / n).tolist(),
        "accuracy_at_step": (self.correct_at_step / n).tolist(),
        "halt_distribution": (self.halt / n).tolist(),
        "pause_histogram": self.pause_histogram.tolist(),
        "dk_auroc": auroc(np.concatenate(self._dk_scores) if self._dk_scores else np.zeros(0),
                          np.concatenate(self._step0_wrong) if self._step0_wrong else np.zeros(0)),
    }
    if self.by_difficulty:
      labels = sorted(self.by_difficulty)
      names = [self._label_name(label) for label in labels]
      entries = [self.by_difficulty[label] for label in labels]
      out["difficulty_tokens"] = {nm: e["tokens"] for nm, e in zip(names, entries)}
      out["pause_rate_by_difficulty"] = {nm: e["paused"] / e["tokens"] for nm, e in zip(names, entries)}
      out["mean_pauses_by_difficulty"] = {nm: e["pauses"] / e["tokens"] for nm, e in zip(names, entries)}
      out["accuracy_by_difficulty"] = {nm: e["correct_policy"] / e["tokens"]
                                       for nm, e in zip(names, entries)}
      out["accuracy_at_step_by_difficulty"] = {nm: (e["correct_at_step"] / e["tokens"]).tolist()
                                               for nm, e in zip(names, entries)}
    return out


def evaluate(params, batches: Iterable[dict], config: model_lib.ModelConfig, num_pauses: int, *,
             policy: str = "threshold", tau: float = 0.5, q: float = 0.5,
             difficulty_names: Optional[dict] = None, max_batches: int = 0,
             put_batch=None, progress=None) -> dict:
  """Streams `batches` (dicts of numpy arrays, see data/example.py) and returns `EvalAccumulator.result()`.

  max_batches: stop after this many (0 = all). put_batch: optional function placing a host batch on
  devices (e.g. with a sharding). progress: optional callable invoked once per batch (e.g. tqdm.update).
  """
  accumulator = EvalAccumulator(num_pauses + 1, difficulty_names)
  for index, batch in enumerate(batches):
    if max_batches and index >= max_batches:
      break
    keys = (example_lib.INPUTS, example_lib.TARGETS, example_lib.LOSS_MASK)
    device_batch = put_batch({k: batch[k] for k in keys}) if put_batch else {k: batch[k] for k in keys}
    metrics = token_metrics(params, device_batch[example_lib.INPUTS], device_batch[example_lib.TARGETS],
                            device_batch[example_lib.LOSS_MASK], config=config, num_pauses=num_pauses,
                            policy=policy, tau=tau, q=q)
    mask, difficulty = batch[example_lib.LOSS_MASK], batch.get(example_lib.DIFFICULTY)
    if jax.process_count() > 1:
      # Each host holds its own rows of the batch; gather all of them (in process order, as the global
      # arrays are laid out) so every host reports the same numbers.
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      metrics = multihost_utils.process_allgather(metrics, tiled=True)
      mask = multihost_utils.process_allgather(mask, tiled=True)
      difficulty = None if difficulty is None else multihost_utils.process_allgather(difficulty,
                                                                                     tiled=True)
    accumulator.add(metrics, mask, difficulty)
    if progress is not None:
      progress()
  return accumulator.result()
