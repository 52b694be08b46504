"""Generate text from a checkpoint, with its pauses shown:

  python sample.py --workdir=DIR [--checkpoint=STEP] [--prompt="..." | --prompts_file=F.txt|F.jsonl
      | --num_prompts=4] [--batch_size=N] [--max_new_tokens=64] [--output=OUT.jsonl]
      [--policy=threshold --tau=0.5] [--temperature=0.8 --top_k=40 --top_p=0.95 --seed=0]
      [--stop="<eos text>" | --stop=#ID ...] [--config.a.b=v ...] [--config=configs/x.py]

The tokenizer and data settings are the checkpoint's own (saved in it); `--config.a.b=v` overrides one
(e.g. `--config.init_from_hf=DIR` for a pretrained model's tokenizer that moved), `--config=FILE` replaces
them with that file's.

Each completion is printed with ⏸ before a token once per pause it took (streamed as it is generated at
batch size 1). Without a prompt, a text run continues the first halves of `--num_prompts` eval rows (as
eval's report does), and a synthetic task's run cuts `--num_prompts` eval examples right before their
answers and generates the answers (prompts there are token ids separated by spaces). `--output`
writes one JSON record per prompt, in prompt order:
{"prompt", "completion", "tokens": [{"text", "pauses", "dk_probs"}, ...]}.
See cyb_jax/inference/sampling.py.
"""

import json
import sys

from absl import app
from absl import flags

from cyb_jax import cli

_CONFIG = cli.define_config_flag("A config file instead of the one saved in the checkpoint.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory of the run.", required=True)
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Checkpoint step (default: the latest).")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt (repeat for several).")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, ".txt (one prompt per line) or .jsonl "
                                    '({"prompt": ...} per line).')
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 4, "Without prompts: how many eval rows or examples to continue.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt (at most).")
_OUTPUT = flags.DEFINE_string("output", None, "Write the records to this .jsonl file.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Prompts generated together.")
_POLICY = flags.DEFINE_string("policy", "threshold", "Pause policy: threshold, cumulative, sample, never, "
                              "always.")
_TAU = flags.DEFINE_float("tau", 0.5, "threshold: pause while P(<dk>) > tau.")
_Q = flags.DEFINE_float("q", 0.5, "cumulative: stop once the halted mass reaches q.")
_NUM_PAUSES = flags.DEFINE_integer("num_pauses", None, "K, the most pauses per token (default: the "
                                   "checkpoint's).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy; else sample at this temperature.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0 = all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Sample within the top-p nucleus (1 = all).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_STOP = flags.DEFINE_multi_string("stop", None, "A stop token: its text, or #ID (default: the "
                                  "tokenizer's EOS).")
_STREAM = flags.DEFINE_bool("stream", True, "At batch size 1, print tokens as they are generated.")


def main(argv):
  del argv
  config, overrides = cli.config_and_overrides(_CONFIG)
  cli.quiet_libraries()
  from cyb_jax import configuration  # pylint: disable=g-import-not-at-top  (jax is slow to import)
  from cyb_jax.inference import sampling  # pylint: disable=g-import-not-at-top
  from cyb_jax.storage import checkpointing  # pylint: disable=g-import-not-at-top
  try:
    sampler = sampling.load_sampler(_WORKDIR.value, _CHECKPOINT.value, config=config, overrides=overrides)
    texts = list(_PROMPT.value)
    if _PROMPTS_FILE.value:
      texts += sampling.read_prompts_file(_PROMPTS_FILE.value)
    labels = None
    max_new_tokens = _MAX_NEW.value
    if texts:
      prompts = [sampling.encode_prompt(sampler, text) for text in texts]
    else:
      prompts, labels = sampling.eval_prompts(sampler, _NUM_PROMPTS.value)
      if not sampler.is_text and not flags.FLAGS["max_new_tokens"].present:
        max_new_tokens = 1  # the answer: what follows it is not a trained target
    settings = sampling.Settings(
        max_new_tokens=max_new_tokens, policy=_POLICY.value, tau=_TAU.value, q=_Q.value,
        num_pauses=_NUM_PAUSES.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
        top_p=_TOP_P.value, seed=_SEED.value, batch_size=_BATCH.value,
        stop_tokens=sampling.stop_ids(sampler, _STOP.value))
    pauses_requested = _NUM_PAUSES.value not in (None, 0) or (
        flags.FLAGS["policy"].present and _POLICY.value != "never")
    sampling.check(sampler, prompts, settings, pauses_requested)  # before the first prompt is printed
    streaming = _STREAM.value and (_BATCH.value == 1 or len(prompts) == 1)
    records, timings = [], []

    def print_token(token, pauses):
      piece = sampling.render({"tokens": [{"text": _piece(sampler, token), "pauses": pauses}]})
      print(piece, end="", flush=True)

    if streaming:
      for index, ids in enumerate(prompts):
        label = f"({labels[index]}) " if labels else ""
        print(label + sampling.show_prompt(sampler, ids) + "|>", end="", flush=True)
        part, stats = sampling.sample(sampler, [ids], settings, on_token=print_token,
                                      pauses_requested=pauses_requested)
        records += part
        timings.append((stats["seconds"], stats["tokens"]))
        print()
      later = timings[1:] or timings  # the first prompt's call compiles
      stats = {"tokens_per_s": sum(n for _, n in later) / max(sum(t for t, _ in later), 1e-9),
               "excludes_compilation": len(timings) > 1}
    else:
      records, stats = sampling.sample(sampler, prompts, settings, pauses_requested=pauses_requested)
      for index, record in enumerate(records):
        label = f"({labels[index]}) " if labels else ""
        print(f"{label}{record['prompt']}|>{sampling.render(record)}")
  except (configuration.ConfigError, checkpointing.CheckpointError, ValueError) as error:
    sys.exit(f"sample error: {error}")
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w", encoding="utf-8") as handle:
      for record in records:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
  tokens = sum(len(r["tokens"]) for r in records)
  pauses = sum(t["pauses"] for r in records for t in r["tokens"])
  note = "" if stats["excludes_compilation"] else ", compilation included"
  print(f"{len(records)} prompts, {tokens} tokens, {stats['tokens_per_s']:.1f} tokens/s{note}, "
        f"mean pauses per token {pauses / max(tokens, 1):.2f}"
        + (f"; wrote {_OUTPUT.value}" if _OUTPUT.value else ""))


_streamed_ids = []


def _piece(sampler, token: int) -> str:
  """What `token` adds to the text streamed so far (a multi-byte character shows when complete)."""
  if not sampler.is_text:
    return f" {token}"
  from cyb_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  _streamed_ids.append(token)
  return tokenizer_lib.token_pieces(sampler.tokenizer, _streamed_ids[-8:])[-1]


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
