"""eval.py on a tiny trained checkpoint: the files it writes, and its numbers against an independent
numpy computation from the model's logits on the same batch."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cyb_jax.storage import checkpointing
from cyb_jax import configuration
from cyb_jax.evaluation import eval_checkpoint
from cyb_jax.evaluation import report
from cyb_jax import model as model_lib
from cyb_jax.training import trainer
from cyb_jax.data import pipeline as data_pipeline
from cyb_jax.data import prompts as prompts_lib
from cyb_jax.inference import sampling
from cyb_jax.inference import rendering
from tests import helpers
from tests import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT_KEYS = ("nll_policy", "nll_marginal", "accuracy", "mean_pauses", "nll_at_step", "accuracy_at_step",
               "dk_auroc", "pause_histogram", "pause_rate_by_difficulty", "config", "checkpoint_step",
               "num_tokens")
PLOTS = ("halting_histogram.png", "pause_rate_by_difficulty.png", "quality_vs_compute.png", "nll_at_step.png")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tiny_run"))
  config = tiny_config.get_config()
  config.train.eval_every = 100  # no periodic eval: only the checkpoint matters here
  trainer.train(config, workdir)
  return config, workdir


def _first_eval_batch(config):
  settings = configuration.settings_from_config(config, device_count=1)
  return next(iter(data_pipeline.make_dataset(settings.data, "eval", int(config.train.batch_size)))), settings


def _reference(config, workdir, tau):
  """Every reported number, from the model's logits, in float64 numpy, with plain loops."""
  batch, settings = _first_eval_batch(config)
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  params = checkpointer.restore_params(checkpointer.latest_step())
  checkpointer.close()
  num_pauses = config.num_pauses
  logits = np.asarray(model_lib.rollout(params, batch["inputs"], settings.model, num_pauses), np.float64)
  vocab = settings.model.vocab_size
  mask, targets, difficulty = batch["loss_mask"], batch["targets"], batch["difficulty"]
  rows = []
  for b, n in zip(*np.nonzero(mask)):
    z = logits[b, n]                                  # [S, V+1]
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    d = p[:, vocab].copy()
    d[-1] = 0.0                                       # the last step cannot pause
    a = p[:, targets[b, n]] / p[:, :vocab].sum(-1)    # P(target | answer at j)
    correct = np.argmax(z[:, :vocab], -1) == targets[b, n]
    stop = next(j for j in range(num_pauses + 1) if j == num_pauses or not d[j] > tau)
    survive = np.concatenate([[1.0], np.cumprod(d[:-1])])
    halt = survive * (1 - d)
    answer0 = p[0, :vocab] / p[0, :vocab].sum()      # the step-0 answer distribution
    entropy0 = -np.sum(answer0 * np.log(answer0))
    rows.append(dict(stop=stop, a=a, correct=correct, d0=p[0, vocab], halt=halt, entropy0=entropy0,
                     label=settings.data_info.difficulty_names[int(difficulty[b, n])]))
  ref = {
      "num_tokens": len(rows),
      "nll_at_step": np.mean([-np.log(r["a"]) for r in rows], 0),
      "accuracy_at_step": np.mean([r["correct"] for r in rows], 0),
      "nll_policy": np.mean([-np.log(r["a"][r["stop"]]) for r in rows]),
      "accuracy": np.mean([r["correct"][r["stop"]] for r in rows]),
      "mean_pauses": np.mean([r["stop"] for r in rows]),
      "nll_marginal": np.mean([-np.log(np.sum(r["halt"] * r["a"])) for r in rows]),
      "pause_histogram": [sum(r["stop"] == j for r in rows) for j in range(num_pauses + 1)],
  }
  # AUROC of d_0 for "step-0 answer wrong", by counting ordered pairs (ties count half).
  wrong = [r["d0"] for r in rows if not r["correct"][0]]
  right = [r["d0"] for r in rows if r["correct"][0]]
  pairs = [(w > c) + 0.5 * (w == c) for w in wrong for c in right]
  ref["dk_auroc"] = float(np.mean(pairs)) if pairs else float("nan")
  labels = sorted({r["label"] for r in rows})
  ref["pause_rate_by_difficulty"] = {l: np.mean([r["stop"] > 0 for r in rows if r["label"] == l]) for l in labels}
  # Step-0 entropy bins, edges (0.1, 0.5, 1, 2, 3, 4) nats: [tokens, paused] per bin with tokens.
  edges = [0.0, 0.1, 0.5, 1.0, 2.0, 3.0, 4.0, np.inf]
  names = ["< 0.1", "0.1-0.5", "0.5-1", "1-2", "2-3", "3-4", ">= 4"]
  ref["by_step0_entropy"] = {}
  for name, lo, hi in zip(names, edges[:-1], edges[1:]):
    members = [r for r in rows if lo <= r["entropy0"] < hi]
    if members:
      ref["by_step0_entropy"][name] = (len(members), np.mean([r["stop"] > 0 for r in members]))
  return ref, rows


def test_eval_writes_reports_that_match_an_independent_computation(trained, tmp_path):
  config, workdir = trained
  # A threshold at the median step-0 <dk> probability makes about half of the tokens pause, so the
  # policy's choices are exercised both ways.
  _, rows = _reference(config, workdir, tau=0.5)
  # Halfway between two neighbouring values, so no token sits on the threshold (float32 vs float64).
  d0 = np.unique([r["d0"] for r in rows])
  middle = len(d0) // 2
  tau = float((d0[middle - 1] + d0[middle]) / 2)
  ref, rows = _reference(config, workdir, tau=tau)
  assert 0 < ref["mean_pauses"] < config.num_pauses

  out = str(tmp_path / "eval")
  eval_checkpoint.evaluate_checkpoint(config, workdir, policy="threshold", tau=tau, max_batches=1,
                                      num_samples=2, out_dir=out, progress=False)
  for name in ("report.json", "report.md") + PLOTS:
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  with open(os.path.join(out, "report.json"), encoding="utf-8") as f:
    report = json.load(f)
  for key in REPORT_KEYS:
    assert key in report, key
  assert report["checkpoint_step"] == config.train.num_steps

  assert report["num_tokens"] == ref["num_tokens"]
  np.testing.assert_allclose(report["nll_at_step"], ref["nll_at_step"], rtol=1e-5)
  np.testing.assert_allclose(report["accuracy_at_step"], ref["accuracy_at_step"], rtol=1e-12)
  for key in ("nll_policy", "accuracy", "mean_pauses", "nll_marginal", "dk_auroc"):
    np.testing.assert_allclose(report[key], ref[key], rtol=1e-5, err_msg=key)
  assert report["pause_histogram"] == ref["pause_histogram"]
  assert report["pause_rate_by_difficulty"].keys() == ref["pause_rate_by_difficulty"].keys()
  for label, rate in ref["pause_rate_by_difficulty"].items():
    assert report["pause_rate_by_difficulty"][label] == pytest.approx(rate)
  assert {name: (row["tokens"], pytest.approx(row["pause_rate"])) for name, row
          in report["by_step0_entropy"].items()} == ref["by_step0_entropy"]
  assert "by_token_class" not in report  # synthetic tokens are numbers, not text

  # The never/always policies are the step-0 and step-K columns of the same numbers.
  assert report["policies"]["never"]["nll_policy"] == pytest.approx(ref["nll_at_step"][0], rel=1e-5)
  assert report["policies"]["always"]["accuracy"] == pytest.approx(ref["accuracy_at_step"][-1])
  # The sweep's threshold 0.99 pauses at most as often as 0.02 (d > tau is harder to meet).
  sweep = {row["tau"]: row["mean_pauses"] for row in report["tau_sweep"]}
  assert sweep[0.99] <= sweep[0.02]

  with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
    markdown = f.read()
  assert "## By difficulty" in markdown and "## Generated samples" in markdown
  assert "## Pauses by the model's step-0 entropy" in markdown
  assert len(report["samples"]) == 2
  # A synthetic task's samples are answers alone (nothing after an answer is trained): the same answers
  # and pauses sample.py's library gives for the same prompts.
  from cyb_jax.inference import sampling  # pylint: disable=g-import-not-at-top
  sampler = sampling.load_sampler(workdir)
  prompts, labels = sampling.eval_prompts(sampler, 2)
  records, _ = sampling.sample(sampler, prompts, sampling.Settings(max_new_tokens=1, tau=tau))
  for sample, label, record in zip(report["samples"], labels, records):
    assert sample.startswith(f"({label}) ..."), sample
    answer = sample.split("|>")[1]
    assert answer.replace("⏸", "").strip() == record["completion"].strip()
    assert answer.count("⏸") == record["tokens"][0]["pauses"]


def test_eval_cli_errors_name_the_problem(trained, tmp_path):
  config, workdir = trained
  empty = str(tmp_path / "empty")
  os.makedirs(empty)
  with pytest.raises(configuration.ConfigError, match="holds no checkpoints"):
    eval_checkpoint.evaluate_checkpoint(config, empty, progress=False)
  with pytest.raises(configuration.ConfigError, match=r"--checkpoint 999 is not in"):
    eval_checkpoint.evaluate_checkpoint(config, workdir, step=999, progress=False)
  # An output directory that cannot be written is found before the evaluation runs, not after it.
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  with pytest.raises(configuration.ConfigError, match="eval output directory .* is a file, not a directory"):
    eval_checkpoint.evaluate_checkpoint(config, workdir, out_dir=str(a_file / "eval"), progress=False)
  wider = tiny_config.get_config()
  wider.model.width = 32
  with pytest.raises(configuration.ConfigError,
                     match=r"does not fit this config: .*model\.width is 16 in the checkpoint but 32 here"):
    eval_checkpoint.evaluate_checkpoint(wider, workdir, progress=False)

  # Through the command line: one line on stderr, non-zero exit.
  proc = subprocess.run([sys.executable, "eval.py", "--config=tests/tiny_config.py", f"--workdir={empty}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1].startswith("eval error:")
  assert "holds no checkpoints" in proc.stderr


def test_text_shown_to_people_is_decoded_in_runs_not_byte_by_byte(tmp_path):
  """The issue's case: a byte-level model's samples of `señor über 日本語` read as that text, and the
  pauses-by-token table names each lone byte >= 0x80 distinctly (`<0xC3>`), not as one replacement mark."""
  text = "señor über 日本語"
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(text * 20, encoding="utf-8")
  data = data_pipeline.DataConfig(name="text_file", text_path=str(corpus), seq_len=16)
  display = eval_checkpoint.TokenDisplay(data)
  ids = np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
  assert rendering.render_sample(display.pieces(ids), np.zeros(len(ids), int)) == text
  # With a pause before 'ü' (its first byte), the mark sits before the whole character.
  pauses = np.zeros(len(ids), int)
  pauses[text.encode("utf-8").index("ü".encode("utf-8"))] = 1
  assert rendering.render_sample(display.pieces(ids), pauses) == text.replace("ü", rendering.PAUSE_MARK + "ü")
  names = {display.token(int(i)) for i in set(ids.tolist()) if i >= 0x80}
  assert names == {f"<0x{i:02X}>" for i in set(ids.tolist()) if i >= 0x80}
  assert "\ufffd" not in "".join(names)
  assert display.token(ord("s")) == "s"


def test_sampling_a_synthetic_task_answers_its_eval_prompts(trained):
  """sample.py's library on a synthetic run: prompts cut right before answers, in the id notation, and
  each answer's pauses follow the threshold rule read back from its <dk> probabilities."""
  from cyb_jax.inference import sampling  # pylint: disable=g-import-not-at-top
  _, workdir = trained
  sampler = sampling.load_sampler(workdir)
  assert not sampler.is_text
  prompts, labels = sampling.eval_prompts(sampler, 3)
  assert len(prompts) == 3 and all("hops" in label for label in labels)
  records, stats = sampling.sample(sampler, prompts, sampling.Settings(max_new_tokens=1, tau=0.5))
  assert [r["prompt"] for r in records] == [" ".join(map(str, p)) for p in prompts]
  assert stats["tokens"] == 3
  for record in records:
    [token] = record["tokens"]
    assert len(token["dk_probs"]) == token["pauses"] + 1
    assert all(d > 0.5 for d in token["dk_probs"][:-1])
    assert token["pauses"] == sampler.num_pauses or token["dk_probs"][-1] <= 0.5
  assert sampling.encode_prompt(sampler, records[0]["prompt"]) == prompts[0]  # the notation round-trips
  with pytest.raises(ValueError, match="notation"):
    sampling.encode_prompt(sampler, "three four")
  with pytest.raises(ValueError, match=r"outside \[0, 26\)"):
    sampling.encode_prompt(sampler, "3 99")


def test_report_text_prompts_are_whole_characters_of_one_document():
  # Byte-level rows: the report's prompts are the first half of each row (here 8 of 16 positions).
  from cyb_jax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  row = "über 日本語 ok".encode()  # ü: bytes 0-1, "ber " 2-5, 日 6-8, 本 9-11
  inputs = np.array([list(row[:16]), list(row[1:17])], np.int32)
  batch = {"inputs": inputs}
  prompts = prompts_lib.text_prompts(batch, 8, tokenizer_lib.ByteTokenizer())
  # Row 0, bytes 0-7: "über " and 2 of 日's 3 bytes -> "über ". Row 1, bytes 1-8: ü's second byte, then
  # "ber 日" -> "ber 日".
  assert [bytes(p).decode() for p in prompts] == ["über ", "ber 日"]
  # Packed rows: only the document the prompt's last token lies in.
  batch["segment_ids"] = np.array([[1] * 3 + [2] * 13, [1] * 16], np.int32)
  prompts = prompts_lib.text_prompts(batch, 8, tokenizer_lib.ByteTokenizer())
  # Row 0: positions 3-7 are segment 2: "er " and 2 of 日's bytes.
  assert [bytes(p).decode() for p in prompts] == ["er ", "ber 日"]
  # Padding (segment 0) after the documents, as TFDS packing leaves it: the last document before it.
  batch["segment_ids"] = np.array([[1] * 5 + [0] * 11, [1] * 2 + [2] * 4 + [0] * 10], np.int32)
  prompts = prompts_lib.text_prompts(batch, 8, tokenizer_lib.ByteTokenizer())
  # Row 0: positions 0-4, "über". Row 1: positions 2-5 are bytes 3-6, "er " and 日's first byte.
  assert [bytes(p).decode() for p in prompts] == ["über", "er "]


# eval.py and sample.py with only --workdir (issue 24): the config the checkpoint was trained with is the
# base, `--config.a.b=v` overrides it, and an explicit --config is used as given (with a warning when it
# reads other data). Each case runs a tiny config that differs from configs/default.py, whose settings the
# entry points read before.

def _messages(caplog) -> list[str]:
  return [record.getMessage() for record in caplog.records if record.name == "cyb_jax"]


def _headline(result: dict) -> tuple:
  return tuple(result[key] for key in ("num_tokens", "nll_policy", "accuracy", "mean_pauses", "nll_marginal"))


def test_eval_without_config_reads_the_synthetic_runs_saved_config(trained, tmp_path):
  config, workdir = trained  # tests/tiny_config.py: 4 symbols, vocabulary 26, width 16
  kwargs = dict(max_batches=1, num_samples=0, progress=False)
  saved = eval_checkpoint.evaluate_checkpoint(None, workdir, out_dir=str(tmp_path / "saved"), **kwargs)
  given = eval_checkpoint.evaluate_checkpoint(config, workdir, out_dir=str(tmp_path / "given"), **kwargs)
  assert _headline(saved) == _headline(given)
  assert saved["config"]["data"]["task"]["num_symbols"] == 4 and saved["model"]["vocab_size"] == 26


TEXT_A = "Now is the winter of our discontent made glorious summer by this sun of York. " * 40
TEXT_B = "0123456789 abcdefghij ABCDEFGHIJ +-*/=<>!? " * 60


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
  """A 2-step byte-level run on a text file of its own (the default config has no text file at all)."""
  root = tmp_path_factory.mktemp("text_run")
  corpus, other = root / "corpus.txt", root / "other.txt"
  corpus.write_text(TEXT_A, encoding="utf-8")
  other.write_text(TEXT_B, encoding="utf-8")
  overrides = {"data.name": "text_file", "data.text_path": str(corpus), "data.task": {}, "data.seq_len": 16,
               "train.num_steps": 2, "train.eval_every": 100, "train.checkpoint_every": 2,
               "train.final_eval_batches": 1}
  workdir = str(root / "run")
  trainer.train(helpers.tiny("", overrides), workdir)
  return dict(workdir=workdir, corpus=str(corpus), other=str(other), overrides=overrides, root=root)


def test_eval_and_sample_take_a_text_runs_data_from_its_checkpoint(text_run, tmp_path, caplog):
  workdir, corpus, other = text_run["workdir"], text_run["corpus"], text_run["other"]
  kwargs = dict(max_batches=1, num_samples=0, progress=False)
  saved = eval_checkpoint.evaluate_checkpoint(None, workdir, out_dir=str(tmp_path / "saved"), **kwargs)
  assert saved["data"] == "text_file" and saved["config"]["data"]["text_path"] == corpus
  given = eval_checkpoint.evaluate_checkpoint(helpers.tiny("", text_run["overrides"]), workdir,
                                              out_dir=str(tmp_path / "given"), **kwargs)
  assert _headline(saved) == _headline(given)

  # An override wins over the saved value: the same numbers as a config that names the other file...
  caplog.set_level(logging.WARNING, logger="cyb_jax")
  overridden = eval_checkpoint.evaluate_checkpoint(None, workdir, overrides={"data.text_path": other},
                                                   out_dir=str(tmp_path / "overridden"), **kwargs)
  assert overridden["config"]["data"]["text_path"] == other
  assert not [line for line in _messages(caplog) if "--config reads other data" in line]
  elsewhere = helpers.tiny("", {**text_run["overrides"], "data.text_path": other})
  explicit = eval_checkpoint.evaluate_checkpoint(elsewhere, workdir, out_dir=str(tmp_path / "explicit"),
                                                 **kwargs)
  assert _headline(overridden) == _headline(explicit) != _headline(saved)
  # ... and that explicit --config, reading other data than the checkpoint's, is warned about.
  [warning] = [line for line in _messages(caplog) if "--config reads other data" in line]
  assert f"data.text_path is {other!r} here but {corpus!r} in the checkpoint" in warning

  sampler = sampling.load_sampler(workdir)
  assert sampler.data.text_path == corpus and sampler.is_text and sampler.data.seq_len == 16
  missing = str(tmp_path / "missing.txt")
  with pytest.raises(configuration.ConfigError, match=rf"^config\.data\.text_path: no such file or folder '{missing}'$"):
    sampling.load_sampler(workdir, overrides={"data.text_path": missing})


def test_a_text_run_samples_without_prompts_from_its_eval_rows(text_run):
  """sample.py with only --workdir on a text run: the first halves of the first eval rows, as the report
  continues them. By hand: byte tokens, eval = the last 10% of the file, rows of 16 inputs in order."""
  sampler = sampling.load_sampler(text_run["workdir"])
  prompts, labels = sampling.eval_prompts(sampler, 2)
  raw = TEXT_A.encode()
  cut = int(round(len(raw) * 0.9))
  assert prompts == [list(raw[cut:cut + 8]), list(raw[cut + 16:cut + 24])]
  assert labels == ["eval row 0", "eval row 1"]


def test_a_text_runs_report_has_the_word_analysis(text_run, tmp_path):
  """Bytes on "Now is the winter of our discontent...": every scored token is counted once in the part-of-speech
  table (spaCy when installed; otherwise one line saying what to install), with the ambiguous words asked for."""
  out = tmp_path / "eval"
  result = eval_checkpoint.evaluate_checkpoint(None, text_run["workdir"], max_batches=1, num_samples=0,
                                               progress=False, out_dir=str(out), ambiguous_words=["the", "sun"])
  analysis = result["word_analysis"]
  assert analysis["overall"]["before"]["tokens"] == result["num_tokens"]
  assert set(analysis["ambiguous"]) == {"the", "sun"}
  assert [row["observation"][:3] for row in analysis["paper"]] == ["(a)", "(b)", "(c)"]
  with open(out / "report.json", encoding="utf-8") as f:
    assert json.load(f)["word_analysis"]["overall"]["before"]["tokens"] == result["num_tokens"]
  text = (out / "report.md").read_text(encoding="utf-8")
  assert "### The paper's observations against this run" in text
  if analysis["tagger"]:
    table = analysis["by_part_of_speech"]
    assert sum(row["before"]["tokens"] for row in table.values()) == result["num_tokens"]
    assert (out / report.PLOTS["words"]).exists()
  else:
    assert analysis["tagger_note"] + "." in text.splitlines()


def test_eval_py_and_sample_py_need_only_the_workdir(text_run, tmp_path):
  workdir, corpus = text_run["workdir"], text_run["corpus"]
  missing = str(tmp_path / "missing.txt")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  commands = {
      "eval": ["eval.py", f"--workdir={workdir}", "--max_batches=1", "--num_samples=0",
               f"--out={tmp_path / 'eval'}"],
      "sample": ["sample.py", f"--workdir={workdir}", "--prompt=Now is", "--max_new_tokens=3", "--stop=#0"],
      "override": ["eval.py", f"--workdir={workdir}", f"--config.data.text_path={missing}"],
  }
  processes = {name: subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for name, args in commands.items()}
  outputs = {name: process.communicate(timeout=600) for name, process in processes.items()}
  for name in ("eval", "sample"):
    assert processes[name].returncode == 0, (name, outputs[name][1][-3000:])
  with open(tmp_path / "eval" / "report.json", encoding="utf-8") as f:
    report_json = json.load(f)
  assert report_json["data"] == "text_file" and report_json["config"]["data"]["text_path"] == corpus
  assert outputs["sample"][0].strip().splitlines()[-1].startswith("1 prompts, 3 tokens")
  assert processes["override"].returncode != 0
  last_line = outputs["override"][1].strip().splitlines()[-1]
  assert last_line == f"eval error: config.data.text_path: no such file or folder {missing!r}"


def test_a_fine_tune_evaluates_from_its_saved_config_after_its_source_is_gone(tmp_path, caplog):
  """configs/finetune.py's case: the run started from another run's checkpoint (`init_from`), which eval
  does not need (the weights are in the fine-tune's own checkpoint). Also the `<dk>` calibration's lines."""
  steps = {"train.num_steps": 2, "train.eval_every": 100, "train.checkpoint_every": 2,
           "train.final_eval_batches": 1}
  source, workdir = str(tmp_path / "source"), str(tmp_path / "finetune")
  trainer.train(helpers.tiny("nopause", steps), source)
  caplog.set_level(logging.INFO, logger="cyb_jax")
  config = helpers.tiny("", {**steps, "init_from": source})
  trainer.train(config, workdir)
  lines = _messages(caplog)
  start = lines.index("calibrating the <dk> bias on an eval batch of 8 x 16 (compiles a forward pass)...")
  assert re.fullmatch(r"calibrated the <dk> bias in \d+\.\d s", lines[start + 1]), lines[start + 1]
  before = eval_checkpoint.evaluate_checkpoint(None, workdir, max_batches=1, num_samples=0, progress=False,
                                               out_dir=str(tmp_path / "before"))
  shutil.rmtree(source)
  with pytest.raises(configuration.ConfigError, match=r"config\.init_from = .* is not a directory"):
    eval_checkpoint.evaluate_checkpoint(config, workdir, progress=False)  # the training config needs it
  after = eval_checkpoint.evaluate_checkpoint(None, workdir, max_batches=1, num_samples=0, progress=False,
                                              out_dir=str(tmp_path / "after"))
  assert _headline(after) == _headline(before) and after["num_tokens"] > 0


def test_the_table_by_difficulty_sums_over_every_batch():
  """Four eval batches at once against each batch evaluated alone and combined by hand: token counts add
  up, and each rate is the token-weighted mean of the batches' rates (a table that kept only the last batch,
  or the first, fails here; every other eval test reads one batch)."""
  from cyb_jax.evaluation import evaluate  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  config = tiny_config.get_config()
  config.model.dk_init_prob = 0.5
  settings = configuration.settings_from_config(config, device_count=1)
  params = model_lib.init(settings.model, jax.random.PRNGKey(3))
  kernel = params["dk_head"]["kernel"]  # a fresh head is input-independent: make it depend on the input
  params["dk_head"]["kernel"] = jax.random.normal(jax.random.PRNGKey(4), kernel.shape, kernel.dtype)
  batches = list(data_pipeline.make_dataset(settings.data, "eval", 4))
  assert len(batches) == 4  # 16 eval examples
  # A <dk> head around probability 0.5 and tau 0.5: some tokens pause and some do not.
  run = lambda batch_list: evaluate.evaluate(params, iter(batch_list), settings.model, config.num_pauses,
                                             tau=0.5, difficulty_names=settings.data_info.difficulty_names)
  together, alone = run(batches), [run([batch]) for batch in batches]
  names = sorted(together["difficulty_tokens"])
  tokens = {name: [part["difficulty_tokens"].get(name, 0) for part in alone] for name in names}
  assert together["difficulty_tokens"] == {name: sum(tokens[name]) for name in names}
  assert sum(together["difficulty_tokens"].values()) == together["num_tokens"] == 16 * 6
  assert len({tuple(part["difficulty_tokens"].values()) for part in alone}) > 1  # the batches differ
  for key in ("pause_rate_by_difficulty", "mean_pauses_by_difficulty", "accuracy_by_difficulty"):
    for name in names:
      combined = sum(part[key][name] * n for part, n in zip(alone, tokens[name]) if n) / sum(tokens[name])
      assert together[key][name] == pytest.approx(combined, abs=1e-9), (key, name)
  for name in names:
    combined = sum(np.asarray(part["accuracy_at_step_by_difficulty"][name]) * n
                   for part, n in zip(alone, tokens[name]) if n) / sum(tokens[name])
    np.testing.assert_allclose(together["accuracy_at_step_by_difficulty"][name], combined, atol=1e-9)
  assert 0 < sum(together["pause_rate_by_difficulty"].values())  # there are pauses to count
  np.testing.assert_array_equal(together["pause_histogram"],
                                np.sum([part["pause_histogram"] for part in alone], axis=0))
