"""Text from a checkpoint: prompts in, completions with the pauses they took out (behind sample.py).

`load_sampler` restores a checkpoint onto the current devices with its own tokenizer (byte, BPE,
SentencePiece, pretrained) or, for the synthetic tasks, their token-id notation; `sample` runs ragged
batches of prompts through `generate.generate` and returns one record per prompt:
  {"prompt": str, "completion": str,
   "tokens": [{"text": str, "pauses": int, "dk_probs": [float, ...]}, ...]}
where `text` is what each token adds to the decoded completion (word pieces and multi-byte characters
joined as the tokenizer joins them) and `dk_probs` the `<dk>` probability at each step taken for it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import ml_collections
import numpy as np

from cyb_jax import configuration
from cyb_jax import model as model_lib
from cyb_jax.data import pipeline as data_pipeline
from cyb_jax.data import prompts as prompts_lib
from cyb_jax.data import tokenizer as tokenizer_lib
from cyb_jax.inference import generate
from cyb_jax.inference import policies
from cyb_jax.inference import rendering
from cyb_jax.storage import run_reader



@dataclasses.dataclass
class Sampler:
  """A restored checkpoint ready to generate: parameters, model, the K it was trained with, its data
  settings and tokenizer (None for synthetic tasks, whose prompts are token ids)."""

  params: Any
  model: model_lib.ModelConfig
  num_pauses: int
  data: data_pipeline.DataConfig
  tokenizer: Optional[tokenizer_lib.Tokenizer]
  step: int

  @property
  def is_text(self) -> bool:
    return self.tokenizer is not None


def load_sampler(workdir: str, step: Optional[int] = None, config: Optional[ml_collections.ConfigDict] = None,
                 overrides: Optional[dict] = None) -> Sampler:
  """The checkpoint `step` (default: latest) of `workdir`, with the tokenizer it was trained with.

  config: the data settings (tokenizer, pretrained source); None = the config the checkpoint was
  trained with, with `overrides` ({dotted key: value}, e.g. {"init_from_hf": new_dir}) applied. A given
  config that reads other data than the checkpoint's logs a warning naming the settings.
  Raises configuration.ConfigError (no checkpoint, a missing tokenizer file) or
  checkpointing.CheckpointError (an unreadable checkpoint), each one line.
  """
  params, meta, step = run_reader.load_params(workdir, step)
  model = model_lib.ModelConfig(**meta["model"])
  if config is None:
    config = configuration.saved_run_config(meta["config"], overrides)
  else:
    run_reader.warn_data_differences(config, meta, workdir, step)
  data = configuration.data_config(config, workdir, write_files=False)
  tokenizer = None
  if data.name in (data_pipeline.TEXT_FILE, data_pipeline.TFDS):
    tokenizer = data_pipeline.configured_tokenizer(data)
  num_pauses = min(int(meta["config"].get("num_pauses", model.max_pauses)), model.max_pauses)
  return Sampler(params=params, model=model, num_pauses=num_pauses, data=data, tokenizer=tokenizer,
                 step=step)


def encode_prompt(sampler: Sampler, prompt: str) -> list[int]:
  """Token ids of `prompt`: the tokenizer's (with BOS when the model was trained with it), or for a
  synthetic task its notation, token ids separated by spaces. Raises ValueError naming the problem."""
  if sampler.is_text:
    ids = [int(i) for i in sampler.tokenizer.encode_document(prompt)]  # BOS first when the model uses it
  else:
    try:
      ids = [int(part) for part in prompt.split()]
    except ValueError:
      raise ValueError(f"prompt {prompt!r} is not in the synthetic task's notation: token ids separated "
                       "by spaces") from None
    bad = [i for i in ids if not 0 <= i < sampler.model.vocab_size]
    if bad:
      raise ValueError(f"prompt {prompt!r} holds ids outside [0, {sampler.model.vocab_size}): {bad}")
  if not ids:
    raise ValueError(f"prompt {prompt!r} encodes to no tokens")
  return ids


def show_prompt(sampler: Sampler, ids: Sequence[int]) -> str:
  """A prompt's ids as text (or the task's id notation)."""
  if sampler.is_text:
    return "".join(tokenizer_lib.token_pieces(sampler.tokenizer, np.asarray(ids)))
  return " ".join(str(int(i)) for i in ids)


def eval_prompts(sampler: Sampler, count: int) -> tuple[list[list[int]], list[str]]:
  """`count` default prompts from the run's eval split (`cyb_jax.data.prompts`), with labels.

  Synthetic tasks: examples cut right after a query, so the next token is an answer (the positions the
  task scores), labelled with each answer's difficulty. Only the answers are trained targets; what a
  model writes after them is not, so a sample of a synthetic task is best the answer alone (sample.py
  generates one token for these prompts). Text: the first half of each of the first eval rows (one
  document, whole characters), labelled "eval row i", as eval's report continues them.
  """
  if sampler.is_text:
    prompts = prompts_lib.eval_text_prompts(sampler.data, sampler.tokenizer, count)
    return prompts, [f"eval row {i}" for i in range(len(prompts))]
  return prompts_lib.answer_prompts(sampler.data, count)


def stop_ids(sampler: Sampler, stops: Optional[Sequence[str]] = None) -> list[int]:
  """Token ids that end a sequence: each of `stops` (a token's text, or `#id`), by default the
  tokenizer's EOS tokens. Raises ValueError for a text that is not one token or an id out of range."""
  if stops is None:
    eos = sampler.tokenizer.eos_ids if sampler.is_text else ()
    return [int(i) for i in eos if 0 <= i < sampler.model.vocab_size]
  ids = []
  for stop in stops:
    if stop.startswith("#") and stop[1:].isdigit():
      if int(stop[1:]) >= sampler.model.vocab_size:
        raise ValueError(f"stop token {stop!r} is outside the vocabulary [0, {sampler.model.vocab_size})")
      ids.append(int(stop[1:]))
      continue
    if not sampler.is_text:
      raise ValueError(f"stop token {stop!r}: for a synthetic task give ids as #id")
    encoded = [int(i) for i in sampler.tokenizer.encode(stop)]
    if len(encoded) != 1:
      raise ValueError(f"stop token {stop!r} is {len(encoded)} tokens, not one; give its id as #id")
    ids.append(encoded[0])
  return ids


@dataclasses.dataclass
class Settings:
  """How to generate: the pause policy and K, sampling, length and stopping (see `generate.generate`)."""

  max_new_tokens: int = 64
  policy: str = "threshold"
  tau: float = 0.5
  q: float = 0.5
  num_pauses: Optional[int] = None   # None: the K the checkpoint was trained with
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  batch_size: int = 8
  stop_tokens: Sequence[int] = ()


def check(sampler: Sampler, prompts: Sequence[Sequence[int]], settings: Settings,
          pauses_requested: bool = False) -> int:
  """The K to use; ValueError (one line) for an unknown policy, a sampling argument out of range, a
  checkpoint without pause parameters asked to pause, or a prompt too long for the model's context with
  the requested tokens. sample.py calls it before printing anything."""
  policies.check_policy(settings.policy, tau=settings.tau, q=settings.q)
  generate.check_sampling_arguments(settings.temperature, settings.top_k, settings.top_p)
  if settings.batch_size < 1:
    raise ValueError(f"--batch_size must be >= 1, got {settings.batch_size}")
  num_pauses = sampler.num_pauses if settings.num_pauses is None else settings.num_pauses
  if sampler.model.max_pauses == 0:
    if pauses_requested or num_pauses > 0:
      raise ValueError("this checkpoint has no pause parameters (model.max_pauses = 0): it cannot pause; "
                       "use --policy=never (or --num_pauses=0)")
  elif not 0 <= num_pauses <= sampler.model.max_pauses:
    raise ValueError(f"--num_pauses = {num_pauses} must lie in [0, {sampler.model.max_pauses}] (the "
                     "checkpoint's model.max_pauses)")
  if settings.max_new_tokens < 1:
    raise ValueError(f"--max_new_tokens must be >= 1, got {settings.max_new_tokens}")
  per_token = num_pauses + 1 if sampler.model.pause_context == "stream" else 1
  room = sampler.model.max_len - settings.max_new_tokens * per_token
  for index, ids in enumerate(prompts):
    if len(ids) > room:
      raise ValueError(f"prompt {index} has {len(ids)} tokens; the model's context of "
                       f"{sampler.model.max_len} leaves room for {max(room, 0)} with --max_new_tokens="
                       f"{settings.max_new_tokens}")
  return num_pauses


def sample(sampler: Sampler, prompts: Sequence[Sequence[int]], settings: Settings,
           on_token: Optional[Callable[[int, int], None]] = None,
           pauses_requested: bool = False) -> tuple[list[dict], dict]:
  """Completions of `prompts` (token ids), in prompt order, and stats.

  Prompts run in batches of `settings.batch_size`, ragged (left-padded), each as if alone. on_token:
  optional `f(token_id, pauses)` called as prompt 0 emits each token (streaming; batch size 1 only).
  Returns (records, stats) with stats {"tokens", "seconds", "tokens_per_s", "mean_pauses",
  "first_batch_seconds"} (the first batch includes compilation; tokens/s counts the later batches when
  there are any).
  """
  num_pauses = check(sampler, prompts, settings, pauses_requested)
  policy = settings.policy if num_pauses > 0 else "never"
  records, timings, total_tokens, total_pauses = [], [], 0, 0
  rng = jax.random.PRNGKey(settings.seed)
  for start in range(0, len(prompts), settings.batch_size):
    chunk = [list(p) for p in prompts[start:start + settings.batch_size]]
    padded = generate.left_pad(chunk)
    callback = None
    if on_token is not None and len(chunk) == 1:
      _STREAM_TARGET[0] = on_token
      callback = _stream_callback
    began = time.perf_counter()
    out = generate.generate(sampler.params, padded, sampler.model, num_tokens=settings.max_new_tokens,
                            num_pauses=num_pauses, policy=policy, tau=settings.tau, q=settings.q,
                            temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                            rng=jax.random.fold_in(rng, start), prompt_lengths=[len(p) for p in chunk],
                            stop_tokens=settings.stop_tokens, on_token=callback)
    out = jax.device_get(out)
    timings.append((time.perf_counter() - began, int(np.sum(out.lengths))))
    for row, ids in enumerate(chunk):
      length = int(out.lengths[row])
      tokens = out.tokens[row, :length].tolist()
      pauses = out.pauses[row, :length].tolist()
      total_tokens += length
      total_pauses += int(sum(pauses))
      records.append(_record(sampler, ids, tokens, pauses, np.exp(out.dk_log_probs[row, :length])))
  later = timings[1:] or timings
  seconds = sum(t for t, _ in later)
  stats = {"tokens": total_tokens, "seconds": sum(t for t, _ in timings),
           "tokens_per_s": sum(n for _, n in later) / max(seconds, 1e-9),
           "mean_pauses": total_pauses / max(total_tokens, 1), "first_batch_seconds": timings[0][0],
           "excludes_compilation": len(timings) > 1}
  return records, stats


# One callback object for every streamed call, so the compiled generation is reused; it forwards to the
# current caller's function.
_STREAM_TARGET: list = [None]


def _stream_callback(token, step, answered) -> None:
  if bool(answered) and _STREAM_TARGET[0] is not None:
    _STREAM_TARGET[0](int(token), int(step))


def _record(sampler: Sampler, prompt: Sequence[int], tokens: list, pauses: list, dk_probs) -> dict:
  if sampler.is_text:
    # Pieces of the whole text, so a continuation's first word piece gets the space decoding gives it.
    pieces = tokenizer_lib.token_pieces(sampler.tokenizer, np.asarray(list(prompt) + tokens))[len(prompt):]
  else:
    pieces = [f" {t}" for t in tokens]
  return {"prompt": show_prompt(sampler, prompt), "completion": "".join(pieces),
          "tokens": [{"text": piece, "pauses": int(p), "dk_probs": [float(d) for d in probs[:p + 1]]}
                     for piece, p, probs in zip(pieces, pauses, dk_probs)]}


def render(record: dict) -> str:
  """The completion with `rendering.PAUSE_MARK` written once per pause before the token that took it."""
  return rendering.render_sample([t["text"] for t in record["tokens"]], [t["pauses"] for t in record["tokens"]])


def read_prompts_file(path: str) -> list[str]:
  """Prompts from a `.txt` file (one per line) or a `.jsonl` file (`{"prompt": ...}` per line).
  Raises ValueError naming the file and line."""
  if not os.path.isfile(path):
    raise ValueError(f"--prompts_file {path!r} does not exist")
  import json  # pylint: disable=g-import-not-at-top
  prompts = []
  with open(path, encoding="utf-8") as handle:
    for number, line in enumerate(handle, 1):
      line = line.rstrip("\n")
      if path.endswith(".jsonl"):
        if not line.strip():
          continue
        try:
          prompts.append(str(json.loads(line)["prompt"]))
        except (ValueError, KeyError, TypeError):
          raise ValueError(f"{path}:{number}: expected a JSON object with a \"prompt\" field") from None
      elif line:
        prompts.append(line)
  if not prompts:
    raise ValueError(f"--prompts_file {path!r} holds no prompt")
  return prompts
