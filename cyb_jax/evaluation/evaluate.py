"""Evaluation metrics of DESIGN.md section 7, streamed over batches.

One jitted rollout per batch gives every token's quality at every step (`step_metrics`); the inference
policies are then replayed on those numbers (`stop_steps`), so any number of policies and a whole sweep
of thresholds cost one forward pass. `EvalAccumulator` folds the per-token arrays into running sums on the
host: an eval set of any size needs memory for one batch plus one float per token for the `<dk>` AUROC.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cyb_jax import compile_log
from cyb_jax import losses
from cyb_jax import model as model_lib
from cyb_jax.evaluation import token_classes
from cyb_jax.evaluation import word_analysis
from cyb_jax.inference import generate
from cyb_jax.inference import policies
from cyb_jax.data import example as example_lib
from cyb_jax.parallel import sharding

# Thresholds for the quality-versus-compute curve (the threshold policy pauses while d_j > tau).
DEFAULT_TAU_SWEEP = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@functools.partial(jax.jit, static_argnames=("config", "num_pauses"))
def step_metrics(params, inputs_BN, targets_BN, mask_BN, segment_ids_BN=None, *,
                 config: model_lib.ModelConfig, num_pauses: int) -> dict:
  """Every token's quality at every step, arrays `[B, N, S]` unless noted.

  nll_at_step: -log a_j; correct_at_step: argmax of the real-vocabulary logits equals the target;
  entropy_0 `[B, N]`: entropy (nats) of the step-0 answer distribution, the softmax of the
  real-vocabulary logits (how unsure the model is before any pause);
  log_d: log d_j, the `<dk>` log-probability under the full V+1 softmax (-inf at the last step);
  halt: the halting distribution h_j; nll_marginal `[B, N]`: -log sum_j h_j a_j.
  """
  vocab = config.vocab_size

  def readout(hidden_BND, step):
    logits_BNV = model_lib.output_logits(params, hidden_BND, config)
    stats = losses.step_stats(logits_BNV[:, :, None], targets_BN, mask_BN)
    answer_logits_BNV = logits_BNV[..., :vocab].astype(jnp.float32)
    correct_BN = jnp.argmax(answer_logits_BNV, axis=-1) == targets_BN
    entropy_BN = jnp.zeros(correct_BN.shape, jnp.float32)
    if step == 0:  # a Python int: the pause steps skip this pass over the vocabulary
      log_p_BNV = jax.nn.log_softmax(answer_logits_BNV, axis=-1)
      entropy_BN = -jnp.sum(jnp.exp(log_p_BNV) * log_p_BNV, axis=-1)
    return jax.tree.map(lambda x: x[..., 0], stats), correct_BN, entropy_BN

  stats, correct_BNS, entropy_BNS = model_lib.rollout_readout(params, inputs_BN, config, num_pauses, None,
                                                              readout, segment_ids_BN)
  halting = losses.halting(stats)
  return {
      "nll_at_step": -halting.log_answer,
      "correct_at_step": correct_BNS,
      "entropy_0": entropy_BNS[..., 0],
      "log_d": halting.log_continue,
      "halt": jnp.exp(halting.log_halt),
      "nll_marginal": losses.cyb_ap(stats, gamma=1.0, omega=0.0),
  }


# Compiled `step_metrics`, by model, K and the shapes, dtypes and shardings of its arguments: compiled
# ahead of time (announced, since it takes minutes at real size), once per process for each.
_COMPILED_STEPS: dict = {}


def _signature(tree) -> tuple:
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple((x.shape, str(x.dtype), getattr(x, "sharding", None)) for x in leaves)


def trace_step_metrics(params, args: tuple, config: model_lib.ModelConfig, num_pauses: int):
  """`step_metrics` traced for `params` and `args` (arrays or ShapeDtypeStructs), in the mesh of the
  inputs' sharding so its rows stay split over the devices (`sharding.constrain_batch`); a
  `jax.stages.Traced`, to `.lower().compile()`."""
  with sharding.mesh_context(args[0]):
    return step_metrics.trace(params, *args, config=config, num_pauses=num_pauses)


def compiled_step_metrics(params, args: tuple, config: model_lib.ModelConfig, num_pauses: int):
  """`step_metrics` compiled for `params` and `args` (inputs, targets, mask, segment ids or None), called
  as `compiled(params, *args)`; compiled once (logging what and how long) and reused."""
  key = (config, num_pauses, _signature((params, args)))
  if key not in _COMPILED_STEPS:
    inputs = args[0]
    devices = len(inputs.sharding.device_set) if hasattr(inputs, "sharding") else 1
    shape = compile_log.shape_text(inputs.shape[0], inputs.shape[1], devices, num_pauses)
    with compile_log.announce(f"compiling eval step ({shape})", "compiled eval step"):
      _COMPILED_STEPS[key] = trace_step_metrics(params, args, config, num_pauses).lower().compile()
  return _COMPILED_STEPS[key]


def stop_steps(log_d_BNS: np.ndarray, policy: str, *, tau: float = 0.5, q: float = 0.5,
               rng: Optional[jax.Array] = None) -> np.ndarray:
  """Where `policy` stops each token, int `[B, N]`, replaying its decisions on log d_j `[B, N, S]`."""
  return np.asarray(policies.stop_steps_from_log_dk(policy, jnp.asarray(log_d_BNS), tau=tau, q=q,
                                                    rng=rng))


def pick(values_BNS: np.ndarray, stop_BN: np.ndarray) -> np.ndarray:
  """values[b, n, stop[b, n]]."""
  return np.take_along_axis(values_BNS, stop_BN[..., None], axis=-1)[..., 0]


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
  """Area under the ROC curve of `scores` for `positives` (ties count half); NaN if a class is empty."""
  scores = np.asarray(scores, np.float64)
  positives = np.asarray(positives, bool)
  num_pos, num_neg = int(positives.sum()), int((~positives).sum())
  if num_pos == 0 or num_neg == 0:
    return float("nan")
  # Mann-Whitney U from average ranks.
  _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  average_rank = np.cumsum(counts) - (counts - 1) / 2.0
  u_stat = average_rank[inverse][positives].sum() - num_pos * (num_pos + 1) / 2.0
  return float(u_stat / (num_pos * num_neg))


def auroc_note(positives: np.ndarray) -> Optional[str]:
  """Why `dk_auroc` (the AUROC of the step-0 `<dk>` probability for "the step-0 answer is wrong") is
  undefined, or None when it is defined: one of its two classes of tokens is empty."""
  positives = np.asarray(positives, bool)
  if positives.size == 0:
    return "no scored tokens"
  if positives.all():
    return "every step-0 answer is wrong: no right answer to rank below the errors"
  if not positives.any():
    return "every step-0 answer is right: no error for <dk> to flag"
  return None


# Bins of the step-0 entropy (nats) for the report's "pauses by the model's own uncertainty" table.
ENTROPY_EDGES = (0.1, 0.5, 1.0, 2.0, 3.0, 4.0)


def entropy_bin_names(edges: Sequence[float] = ENTROPY_EDGES) -> list[str]:
  """["< 0.1", "0.1-0.5", ..., ">= 4"]: the names of the bins `np.digitize(entropy, edges)` gives."""
  return ([f"< {edges[0]:g}"] + [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])]
          + [f">= {edges[-1]:g}"])


def _group_sums(member_TG: np.ndarray, stop: np.ndarray, correct: np.ndarray) -> np.ndarray:
  """int `[G, 4]`: per group (column of the bool membership `[T, G]`) tokens, paused, pauses, correct."""
  member = member_TG.astype(np.int64)
  return np.stack([member.sum(0), member.T @ (stop > 0), member.T @ stop, member.T @ correct.astype(np.int64)],
                  axis=1)


def _group_table(names: Sequence[str], sums: np.ndarray) -> dict:
  """{name: {tokens, pause_rate, mean_pauses, accuracy}} for the groups with tokens."""
  return {name: {"tokens": int(row[0]), "pause_rate": float(row[1] / row[0]),
                 "mean_pauses": float(row[2] / row[0]), "accuracy": float(row[3] / row[0])}
          for name, row in zip(names, sums) if row[0] > 0}


class PolicyAccumulator:
  """Running sums for one policy: quality where it stops, pauses, and the same by difficulty, token id,
  token class and step-0 entropy bin."""

  def __init__(self, num_steps: int, vocab_size: Optional[int] = None):
    self.num_steps = num_steps
    self.tokens = 0
    self.nll = 0.0
    self.correct = 0
    self.pauses = 0
    self.histogram = np.zeros(num_steps, np.int64)
    self.by_difficulty: dict[int, np.ndarray] = {}  # label -> [tokens, paused, pauses, correct]
    self.by_token = None if vocab_size is None else np.zeros((vocab_size, 2), np.int64)  # tokens, pauses
    self.by_class: Optional[np.ndarray] = None  # [classes, 4] as by_difficulty
    self.by_entropy: Optional[np.ndarray] = None  # [bins, 4] as by_difficulty

  def add(self, stop: np.ndarray, nll: np.ndarray, correct: np.ndarray,
          difficulty: Optional[np.ndarray] = None, targets: Optional[np.ndarray] = None,
          classes: Optional[np.ndarray] = None, entropy_bin: Optional[np.ndarray] = None) -> None:
    """All arguments are 1-D over the batch's unmasked tokens, except `classes`, bool `[T, classes]`;
    entropy_bin: int in [0, len(ENTROPY_EDGES)]."""
    stop = np.asarray(stop, np.int64)
    if classes is not None:
      sums = _group_sums(classes, stop, correct)
      self.by_class = sums if self.by_class is None else self.by_class + sums
    if entropy_bin is not None:
      sums = _group_sums(entropy_bin[:, None] == np.arange(len(ENTROPY_EDGES) + 1), stop, correct)
      self.by_entropy = sums if self.by_entropy is None else self.by_entropy + sums
    self.tokens += stop.size
    self.nll += float(nll.astype(np.float64).sum())
    self.correct += int(correct.sum())
    self.pauses += int(stop.sum())
    self.histogram += np.bincount(stop, minlength=self.num_steps)[:self.num_steps]
    if difficulty is not None:
      labels = np.unique(difficulty)
      for label, sums in zip(labels, _group_sums(difficulty[:, None] == labels, stop, correct)):
        self.by_difficulty[int(label)] = self.by_difficulty.get(int(label), 0) + sums
    if self.by_token is not None and targets is not None:
      np.add.at(self.by_token[:, 0], targets, 1)
      np.add.at(self.by_token[:, 1], targets, stop)

  def result(self) -> dict:
    n = max(self.tokens, 1)
    return {"nll_policy": self.nll / n, "accuracy": self.correct / n, "mean_pauses": self.pauses / n,
            "pause_histogram": self.histogram.tolist()}


class EvalAccumulator:
  """Running sums of `step_metrics` over unmasked tokens, under a main policy, other policies and a
  threshold sweep; overall, by difficulty label and by target token id."""

  def __init__(self, num_steps: int, *, policy: str = "threshold", tau: float = 0.5, q: float = 0.5,
               difficulty_names: Optional[dict] = None, other_policies: Sequence[str] = (),
               tau_sweep: Sequence[float] = (), vocab_size: Optional[int] = None, seed: int = 0,
               token_classifier: Optional[Callable[[np.ndarray], np.ndarray]] = None,
               word_analyzer: Optional[word_analysis.Analyzer] = None):
    policies.check_policy(policy, tau=tau, q=q)
    self.token_classifier = token_classifier  # target ids [B, N] -> bool [B, N, len(token_classes.CLASSES)]
    self._labels: tuple = (None, None)  # the last batch's token classes and entropy bins (add_inference)
    # Text: pauses by the word each target belongs to, in the rollout and (stream models) in inference.
    self.word_analyzer = word_analyzer
    self.words_main = word_analyzer.accumulator() if word_analyzer is not None else None
    self.words_inference = word_analyzer.accumulator() if word_analyzer is not None else None
    self._words: Optional[tuple] = None  # the last batch's word labels and p = 1 - h_0 (add_inference)
    self.num_steps = num_steps
    self.policy, self.tau, self.q = policy, tau, q
    self.difficulty_names = {int(k): v for k, v in (difficulty_names or {}).items()}
    self.rng = jax.random.PRNGKey(seed)
    self.main = PolicyAccumulator(num_steps, vocab_size)
    self.others = {name: PolicyAccumulator(num_steps) for name in other_policies if name != policy}
    self.sweep = {float(t): PolicyAccumulator(num_steps) for t in tau_sweep}
    self.tokens = 0
    self.nll_marginal = 0.0
    self.nll_at_step = np.zeros(num_steps)
    self.correct_at_step = np.zeros(num_steps)
    self.halt = np.zeros(num_steps)
    self.correct_at_step_by_difficulty: dict[int, np.ndarray] = {}
    # Stream models: the main policy run as inference runs it (teacher-forced, pauses in the stream only
    # where it paused), fed by `add_inference`; the rollout replay above is then the training context.
    self.inference = PolicyAccumulator(num_steps, vocab_size)
    self._dk_scores: list[np.ndarray] = []
    self._step0_wrong: list[np.ndarray] = []
    self._batches = 0

  def _stop(self, log_d, policy, tau, q):
    rng = jax.random.fold_in(self.rng, self._batches)
    return stop_steps(log_d, policy, tau=tau, q=q, rng=rng)

  def add(self, metrics: dict, mask_BN: np.ndarray, difficulty_BN: Optional[np.ndarray] = None,
          targets_BN: Optional[np.ndarray] = None) -> None:
    metrics = jax.device_get(metrics)
    mask = np.asarray(mask_BN, bool)
    self._batches += 1
    self._labels = (None, None)
    self._words = None
    if not mask.any():
      return
    nll_at_step = np.asarray(metrics["nll_at_step"], np.float64)
    correct_at_step = np.asarray(metrics["correct_at_step"], bool)
    log_d = np.asarray(metrics["log_d"], np.float32)
    difficulty = None if difficulty_BN is None else np.asarray(difficulty_BN)[mask]
    targets = None if targets_BN is None else np.asarray(targets_BN)[mask]
    classes = None
    if self.token_classifier is not None and targets_BN is not None:
      classes = np.asarray(self.token_classifier(np.asarray(targets_BN)), bool)[mask]
    entropy_bin = None
    if "entropy_0" in metrics:
      entropy_bin = np.digitize(np.asarray(metrics["entropy_0"], np.float64)[mask], ENTROPY_EDGES)
    self._labels = (classes, entropy_bin)
    if self.word_analyzer is not None and targets_BN is not None:
      # p = 1 - h_0: the probability of pausing at step 0, whose spread measures variability.
      self._words = (self.word_analyzer.label(np.asarray(targets_BN)),
                     1.0 - np.asarray(metrics["halt"], np.float64)[..., 0])

    self.tokens += int(mask.sum())
    self.nll_marginal += float(np.asarray(metrics["nll_marginal"], np.float64)[mask].sum())
    self.nll_at_step += nll_at_step[mask].sum(0)
    self.correct_at_step += correct_at_step[mask].sum(0)
    self.halt += np.asarray(metrics["halt"], np.float64)[mask].sum(0)
    self._dk_scores.append(log_d[..., 0][mask])
    self._step0_wrong.append(~correct_at_step[..., 0][mask])
    if difficulty is not None:
      for label in np.unique(difficulty):
        rows = difficulty == label
        entry = self.correct_at_step_by_difficulty.setdefault(int(label), np.zeros(self.num_steps))
        entry += correct_at_step[mask][rows].sum(0)

    def add_policy(accumulator, policy, tau, q, with_labels):
      stop = self._stop(log_d, policy, tau, q)
      labels = (difficulty, targets, classes, entropy_bin) if with_labels else ()
      accumulator.add(stop[mask], pick(nll_at_step, stop)[mask], pick(correct_at_step, stop)[mask], *labels)
      return stop

    main_stop = add_policy(self.main, self.policy, self.tau, self.q, True)
    if self._words is not None:
      self.words_main.add(self._words[0], main_stop, self._words[1], mask, np.asarray(targets_BN))
    for name, accumulator in self.others.items():
      add_policy(accumulator, name, self.tau, self.q, False)
    for tau, accumulator in self.sweep.items():
      add_policy(accumulator, "threshold", tau, self.q, False)

  def add_inference(self, stop_BN: np.ndarray, nll_BNS: np.ndarray, correct_BNS: np.ndarray,
                    mask_BN: np.ndarray, difficulty_BN: Optional[np.ndarray] = None,
                    targets_BN: Optional[np.ndarray] = None) -> None:
    """The main policy's stops `[B, N]` and per-step NLL / correctness `[B, N, S]` from inference itself.

    Called after `add` for the same batch, whose token classes and step-0 entropy bins (of the rollout)
    it reuses.
    """
    mask = np.asarray(mask_BN, bool)
    stop = np.asarray(stop_BN, np.int64)
    self.inference.add(stop[mask], pick(np.asarray(nll_BNS, np.float64), stop)[mask],
                       pick(np.asarray(correct_BNS, bool), stop)[mask],
                       None if difficulty_BN is None else np.asarray(difficulty_BN)[mask],
                       None if targets_BN is None else np.asarray(targets_BN)[mask], *self._labels)
    if self._words is not None and targets_BN is not None:
      self.words_inference.add(self._words[0], stop, self._words[1], mask, np.asarray(targets_BN))

  def _label_name(self, label: int) -> str:
    return str(self.difficulty_names.get(label, label))

  def result(self) -> dict:
    """The metrics as plain Python numbers and lists (JSON-ready)."""
    n = max(self.tokens, 1)
    scores = np.concatenate(self._dk_scores) if self._dk_scores else np.zeros(0)
    wrong = np.concatenate(self._step0_wrong) if self._step0_wrong else np.zeros(0, bool)
    out = {"num_tokens": self.tokens, "policy": self.policy, **self.main.result(),
           "nll_marginal": self.nll_marginal / n,
           "nll_at_step": (self.nll_at_step / n).tolist(),
           "accuracy_at_step": (self.correct_at_step / n).tolist(),
           "halt_distribution": (self.halt / n).tolist(),
           "dk_auroc": auroc(scores, wrong)}
    note = auroc_note(wrong)
    if note:  # dk_auroc is NaN ("nan" in JSON files); this says why
      out["dk_auroc_note"] = note
    if self.policy == "threshold":
      out["tau"] = self.tau
    if self.policy == "cumulative":
      out["q"] = self.q
    if self.others:
      out["policies"] = {name: acc.result() for name, acc in self.others.items()}
    if self.sweep:
      out["tau_sweep"] = [{"tau": tau, **acc.result()} for tau, acc in sorted(self.sweep.items())]
    main, words = self.main, self.words_main
    out["context"] = "rollout"
    if self.inference.tokens:
      out["training_context"] = {key: out[key] for key in ("nll_policy", "accuracy", "mean_pauses",
                                                             "pause_histogram")}
      out.update(self.inference.result())
      out["context"] = "inference"
      main, words = self.inference, self.words_inference
    if main.by_difficulty:
      labels = sorted(main.by_difficulty)
      names = {label: self._label_name(label) for label in labels}
      stats = main.by_difficulty
      out["difficulty_tokens"] = {names[l]: int(stats[l][0]) for l in labels}
      out["pause_rate_by_difficulty"] = {names[l]: float(stats[l][1] / stats[l][0]) for l in labels}
      out["mean_pauses_by_difficulty"] = {names[l]: float(stats[l][2] / stats[l][0]) for l in labels}
      out["accuracy_by_difficulty"] = {names[l]: float(stats[l][3] / stats[l][0]) for l in labels}
      out["accuracy_at_step_by_difficulty"] = {
          names[l]: (self.correct_at_step_by_difficulty[l] / stats[l][0]).tolist() for l in labels}
    if main.by_token is not None:
      counts, pauses = main.by_token[:, 0], main.by_token[:, 1]
      seen = np.nonzero(counts)[0]
      out["mean_pauses_by_token"] = {int(t): float(pauses[t] / counts[t]) for t in seen}
      out["tokens_by_token"] = {int(t): int(counts[t]) for t in seen}
    if main.by_class is not None:
      out["by_token_class"] = _group_table(token_classes.CLASSES, main.by_class)
    if main.by_entropy is not None:
      out["by_step0_entropy"] = _group_table(entropy_bin_names(), main.by_entropy)
    if words is not None and words.all[1, 0]:
      out["word_analysis"] = words.result()
    return out


def _inference_context(params, device_batch: dict, config: model_lib.ModelConfig, num_pauses: int,
                       policy: str, tau: float, q: float, index: int) -> dict:
  """Teacher-forced inference on a batch's text: (pauses `[B, N]`, nll and correct `[B, N, S]`).

  Position n of the batch predicts targets[n]; inference is run on inputs[:, 0] followed by targets, so
  slot n is that prediction. Rows must hold one document each (inference has no document boundaries);
  `evaluate` skips this for sources that pack rows.
  """
  inputs, targets = device_batch[example_lib.INPUTS], device_batch[example_lib.TARGETS]
  tokens = jnp.concatenate([inputs[:, :1], targets], axis=1)
  out = generate.teacher_forced(params, tokens, config, num_pauses=num_pauses, policy=policy, tau=tau, q=q,
                                rng=jax.random.PRNGKey(index))
  result = {"pauses": out.pauses, "nll": out.target_nll, "correct": out.target_correct}
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    result = multihost_utils.process_allgather(result, tiled=True)
  return jax.device_get(result)


def _in_lockstep(batches: Iterable[dict]):
  """`batches`, run for as many steps as the process with the most batches has (a source whose hosts
  pack their own documents ends at different steps on different hosts): a host whose batches are over
  runs copies of its last one carrying no loss, so every host takes part in every gather."""
  if jax.process_count() == 1:
    yield from batches
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  iterator, last = iter(batches), None
  while True:
    batch = next(iterator, None)
    more = multihost_utils.process_allgather(np.array([batch is not None]))
    if not more.any():
      return
    if batch is None:
      if last is None:
        raise ValueError(f"process {jax.process_index()} has no eval batch while others have; give the "
                         "eval split more documents")
      batch = example_lib.masked_copy(last)
    last = batch
    yield batch


def evaluate(params, batches: Iterable[dict], config: model_lib.ModelConfig, num_pauses: int, *,
             policy: str = "threshold", tau: float = 0.5, q: float = 0.5,
             difficulty_names: Optional[dict] = None, max_batches: int = 0, put_batch=None,
             progress=None, other_policies: Sequence[str] = (), tau_sweep: Sequence[float] = (),
             per_token: bool = False,
             token_classifier: Optional[Callable[[np.ndarray], np.ndarray]] = None,
             word_analyzer: Optional[word_analysis.Analyzer] = None) -> dict:
  """Streams `batches` (dicts of numpy arrays, see data/example.py) and returns the metrics.

  max_batches: stop after this many (0 = all). put_batch: optional function placing a host batch on
  devices (e.g. with a sharding). progress: optional callable invoked once per batch.
  other_policies, tau_sweep: more policies and thresholds to replay on the same forward passes.
  per_token: also report pauses per target token id (text: which tokens pause most).
  token_classifier: optional function from target ids `[B, N]` to bool `[B, N, len(token_classes.CLASSES)]`
  (`token_classes.row_classifier`): the result then has "by_token_class".
  word_analyzer: optional `word_analysis.Analyzer` (text): the result then has "word_analysis", pauses by
  the part of speech of each target's word, by contraction piece and for ambiguous words.
  """
  accumulator = EvalAccumulator(num_pauses + 1, policy=policy, tau=tau, q=q,
                                difficulty_names=difficulty_names, other_policies=other_policies,
                                tau_sweep=tau_sweep, token_classifier=token_classifier,
                                word_analyzer=word_analyzer,
                                vocab_size=config.vocab_size if per_token else None)
  keys = (example_lib.INPUTS, example_lib.TARGETS, example_lib.LOSS_MASK, example_lib.SEGMENT_IDS)
  # DESIGN.md section 3: a stream model's headline numbers come from inference's own context.
  inference_context = config.pause_context == "stream" and num_pauses > 0
  packed = False
  num_batches = 0
  for index, batch in enumerate(_in_lockstep(batches)):
    if max_batches and index >= max_batches:
      break
    num_batches += 1
    if inference_context and example_lib.SEGMENT_IDS in batch:
      # Packed rows (TFDS): inference has no document boundaries, so only the rollout is reported.
      inference_context, packed = False, True
    device_batch = {k: batch[k] for k in keys if k in batch}  # segment ids of packed rows only
    if put_batch is not None:
      device_batch = put_batch(device_batch)
    args = (device_batch[example_lib.INPUTS], device_batch[example_lib.TARGETS],
            device_batch[example_lib.LOSS_MASK], device_batch.get(example_lib.SEGMENT_IDS))
    metrics = compiled_step_metrics(params, args, config, num_pauses)(params, *args)
    host = {k: batch.get(k) for k in (example_lib.LOSS_MASK, example_lib.DIFFICULTY, example_lib.TARGETS)}
    if jax.process_count() > 1:
      # Each host holds its own rows; gather all of them (in process order, as the global arrays are laid
      # out) so every host reports the same numbers.
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      metrics, host = multihost_utils.process_allgather((metrics, host), tiled=True)
    accumulator.add(metrics, host[example_lib.LOSS_MASK], host[example_lib.DIFFICULTY],
                    host[example_lib.TARGETS])
    if inference_context:
      forced = _inference_context(params, device_batch, config, num_pauses, policy, tau, q, index)
      accumulator.add_inference(forced["pauses"], forced["nll"], forced["correct"], host[example_lib.LOSS_MASK],
                                host[example_lib.DIFFICULTY], host[example_lib.TARGETS])
    if progress is not None:
      progress()
  result = accumulator.result()
  result["num_batches"] = num_batches
  if packed:
    result["context_note"] = ("stream model on packed rows: the inference context is not computed; the "
                              "numbers are the training rollout's")
  return result
