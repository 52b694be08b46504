"""Evaluate a saved checkpoint on the eval split and write a report (what `eval.py` runs).

The config gives the data and the eval settings (by default the one the checkpoint was trained with,
saved in its meta); the model is read from the checkpoint's own metadata, and the two must agree on
vocabulary and shape, or the run stops with a one-line error before any compilation.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional

import jax
import ml_collections
import numpy as np

from cyb_jax import configuration
from cyb_jax.evaluation import evaluate
from cyb_jax.inference import generate
from cyb_jax import model as model_lib
from cyb_jax.inference import policies
from cyb_jax.inference import rendering
from cyb_jax.parallel import runtime
from cyb_jax.storage import run_reader
from cyb_jax.evaluation import report
from cyb_jax.evaluation import token_classes
from cyb_jax.evaluation import word_analysis
from cyb_jax.data import example as example_lib
from cyb_jax.data import pipeline as data_pipeline
from cyb_jax.data import prompts as prompts_lib
from cyb_jax.data import tokenizer as tokenizer_lib

log = logging.getLogger("cyb_jax")


class TokenDisplay:
  """How tokens are shown to people: text data through its tokenizer, synthetic tokens by id.

  `token(id)` names one token for a table (its text, or e.g. `<0xC3>` when it is not valid text alone);
  `pieces(ids)` gives the text each token of a run adds, so a run reads as decoded text (word pieces
  and multi-byte characters joined as the tokenizer joins them).
  """

  def __init__(self, data: data_pipeline.DataConfig):
    self.tokenizer = None
    if data.name in (data_pipeline.TEXT_FILE, data_pipeline.TFDS):
      self.tokenizer = data_pipeline.configured_tokenizer(data)

  def token(self, token_id: int) -> str:
    if self.tokenizer is None:
      return f" {int(token_id)}"
    return self.tokenizer.token_text(int(token_id))

  def pieces(self, ids) -> list[str]:
    if self.tokenizer is None:
      return [f" {int(t)}" for t in np.asarray(ids).reshape(-1)]
    return tokenizer_lib.token_pieces(self.tokenizer, ids)

  def token_classifier(self):
    """For text data, the function from target ids `[B, N]` to their token classes (token_classes.py);
    None for synthetic tasks, whose tokens are numbers."""
    if self.tokenizer is None:
      return None
    return token_classes.row_classifier(self.pieces)

  def word_analyzer(self, ambiguous_words=None) -> Optional[word_analysis.Analyzer]:
    """For text data, the analysis of pauses by the word each target belongs to (word_analysis.py), with
    spaCy's part-of-speech tagger when it is installed; None for synthetic tasks."""
    if self.tokenizer is None:
      return None
    tagger, name = word_analysis.load_tagger()
    if tagger is None:
      log.info("%s (the rest of the word analysis runs without it)", name)
    words = word_analysis.DEFAULT_AMBIGUOUS if ambiguous_words is None else tuple(ambiguous_words)
    return word_analysis.Analyzer(self.pieces, tagger, words, tagger_name=name if tagger else "",
                                  note="" if tagger else name)


def _answer_samples(params, model_config: model_lib.ModelConfig, num_pauses: int, data, *,
                    num_samples: int, policy: str, tau: float, q: float,
                    display: TokenDisplay) -> list[str]:
  """A synthetic task's samples: the answer alone after `answer_prompts` (what follows an answer is not
  a trained target), each labelled with its difficulty."""
  prompts, labels = prompts_lib.answer_prompts(data, num_samples)
  out = generate.generate(params, generate.left_pad(prompts), model_config, num_tokens=1, num_pauses=num_pauses,
                          policy=policy, tau=tau, q=q, prompt_lengths=[len(ids) for ids in prompts])
  samples = []
  for row, (ids, label) in enumerate(zip(prompts, labels)):
    shown_prompt = "".join(display.pieces(np.asarray(ids))[-64:])
    answer = rendering.render_sample(display.pieces(np.asarray(out.tokens[row])), np.asarray(out.pauses[row]))
    samples.append(f"({label}) ...{shown_prompt}|>{answer}")
  return samples


def generate_samples(params, model_config: model_lib.ModelConfig, num_pauses: int, data, *,
                     num_samples: int, policy: str, tau: float, q: float,
                     display: TokenDisplay) -> list[str]:
  """Samples for the report, each pause marked: on text, continuations of the first eval examples'
  first halves; on a synthetic task, answers to eval queries (`_answer_samples`)."""
  if num_samples <= 0:
    return []
  if display.tokenizer is None:
    return _answer_samples(params, model_config, num_pauses, data, num_samples=num_samples, policy=policy,
                           tau=tau, q=q, display=display)
  batch = next(iter(data_pipeline.make_dataset(data, "eval", num_samples, seed=0)))
  seq_len = batch[example_lib.INPUTS].shape[1]
  prompt_len = max(1, seq_len // 2)
  per_token = 1 if model_config.pause_context == "private" else num_pauses + 1  # cache entries per token
  num_tokens = max(1, min(48, (model_config.max_len - prompt_len) // per_token))
  prompts = prompts_lib.text_prompts(batch, prompt_len, display.tokenizer)
  out = generate.generate(params, generate.left_pad(prompts), model_config, num_tokens=num_tokens,
                          num_pauses=num_pauses, policy=policy, tau=tau, q=q,
                          prompt_lengths=[len(ids) for ids in prompts])
  samples = []
  for row, ids in enumerate(prompts):
    shown_prompt = "".join(display.pieces(np.asarray(ids))[-64:])
    continuation = rendering.render_sample(display.pieces(np.asarray(out.tokens[row])),
                                        np.asarray(out.pauses[row]))
    samples.append(f"...{shown_prompt}|>{continuation}")
  return samples


def evaluate_checkpoint(config: Optional[ml_collections.ConfigDict], workdir: str, *,
                        step: Optional[int] = None, policy: Optional[str] = None, tau: Optional[float] = None,
                        q: Optional[float] = None, max_batches: int = 0, batch_size: int = 0,
                        num_samples: int = 4, out_dir: Optional[str] = None, progress: bool = True,
                        overrides: Optional[dict] = None, ambiguous_words=None) -> dict:
  """Evaluates a checkpoint of `workdir` and writes `out_dir` (default `workdir/eval`). Returns the report.

  config: the data and eval settings; None = the config the checkpoint was trained with (its saved
  data, tokenizer and pretrained source), with `overrides` ({dotted key: value}) applied. A given
  config that reads other data than the checkpoint's logs a warning naming the settings.
  ambiguous_words: the words whose pause variability the report shows (text; default
  `word_analysis.DEFAULT_AMBIGUOUS`).
  In a multi-process run (`config.distributed`, or under `python -m cyb_jax.launch`) each process reads
  its block of every eval batch and the metrics are gathered, so every process computes the report a
  single process would; process 0 writes it.
  """
  from_saved = config is None
  # Before anything touches jax: the runtime settings come from the command line, never the saved run's.
  runtime.initialize(configuration.with_overrides({}, overrides) if from_saved else config)
  if from_saved:
    config, step = run_reader.load_run_config(workdir, step, overrides)  # the same step is evaluated
  is_main = jax.process_index() == 0
  eval_config = config.copy_and_resolve_references()
  with eval_config.unlocked():
    if policy is not None:
      eval_config.eval.policy = policy
    if tau is not None:
      eval_config.eval.tau = tau
    if q is not None:
      eval_config.eval.q = q
    if batch_size:
      eval_config.train.batch_size = batch_size
    # One device, whatever mesh the run trained on (a saved config's data x fsdp would not fit it).
    eval_config.mesh.num_devices, eval_config.mesh.data, eval_config.mesh.fsdp = 1, -1, 1
  settings = configuration.settings_from_config(eval_config, device_count=1, workdir=workdir,
                                                process_count=jax.process_count(), write_files=False)
  out_dir = out_dir or os.path.join(workdir, "eval")
  configuration.check_output_dir(out_dir, "eval output directory")  # before the evaluation, not after
  params, meta, step = run_reader.load_params(workdir, step)
  if not from_saved:
    run_reader.warn_data_differences(eval_config, meta, workdir, step)
  saved_model = model_lib.ModelConfig(**meta["model"])
  differences = configuration.shape_differences(saved_model, settings.model)
  if differences:
    raise configuration.ConfigError(
        f"checkpoint {step} in {workdir!r} does not fit this config: {differences}")
  # The checkpoint knows its own architecture options; the config only chooses data and policy.
  model_config = dataclasses.replace(saved_model, max_len=max(saved_model.max_len, settings.model.max_len))
  saved_pauses = int(meta["config"].get("num_pauses", settings.num_pauses))
  num_pauses = min(saved_pauses, model_config.max_pauses)
  chosen = eval_config.eval.policy
  if num_pauses == 0:
    chosen = "never"
  others = [p for p in policies.POLICIES if p != chosen] if num_pauses > 0 else []
  tau_sweep = evaluate.DEFAULT_TAU_SWEEP if num_pauses > 0 else ()

  batches = data_pipeline.make_dataset(settings.data, "eval", int(eval_config.train.batch_size), seed=0,
                                       process_index=jax.process_index(), process_count=jax.process_count())
  bar = None
  if progress and is_main:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(desc="eval", unit="batch", total=max_batches or None)
  is_text = settings.data_info.difficulty_names is None
  display = TokenDisplay(settings.data)
  result = evaluate.evaluate(params, iter(batches), model_config, num_pauses, policy=chosen,
                             tau=float(eval_config.eval.tau), q=float(eval_config.eval.q),
                             difficulty_names=settings.data_info.difficulty_names,
                             max_batches=max_batches, progress=bar.update if bar is not None else None,
                             other_policies=others, tau_sweep=tau_sweep, per_token=True,
                             token_classifier=display.token_classifier(),
                             word_analyzer=display.word_analyzer(ambiguous_words))
  if bar is not None:
    bar.close()
  samples = generate_samples(params, model_config, num_pauses, settings.data, num_samples=num_samples,
                             policy=chosen if chosen != "sample" else "threshold",
                             tau=float(eval_config.eval.tau), q=float(eval_config.eval.q), display=display)
  header = {"workdir": os.path.abspath(workdir), "checkpoint_step": step, "num_pauses": num_pauses,
            "objective": meta["config"].get("objective", {}).get("name"),
            "data": settings.data.name, "text_data": is_text,
            "model": dataclasses.asdict(model_config), "config": configuration.as_json_dict(eval_config)}
  written = {}
  if is_main:
    written = report.write_report(out_dir, result, header=header, samples=samples, decode=display.token)
    log.info("wrote %s", ", ".join(sorted(written)))
  return {**header, **result, "samples": samples, "files": written, "out_dir": out_dir}
