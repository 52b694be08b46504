"""End to end from pretrained and word-piece models: configs/finetune_hf.py on a transformers-made fixture,
and a byte-level BPE trained on a text file's training split.

The fixture (tests/fixtures/hf/llama_llama3rope) is a tiny random Llama 3-style model with its own
byte-level BPE tokenizer, and the logits transformers computed for it (golden.npz): the fine-tuning run
must start from exactly those logits at step 0.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import finetune_hf
from cyb_jax import configuration
from cyb_jax import model as model_lib
from cyb_jax.data import pipeline as data_pipeline
from cyb_jax.data import tokenizer as tokenizer_lib
from cyb_jax.evaluation import eval_checkpoint
from cyb_jax.evaluation import token_classes
from cyb_jax.storage import checkpointing
from cyb_jax.training import trainer
from helpers import forbid_compilation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAMA = os.path.join(ROOT, "tests", "fixtures", "hf", "llama_llama3rope")
# The first 20,000 characters of tinyshakespeare (committed: these tests run without ../shared). Made by
#   python -c "open('tests/fixtures/shakespeare_20k.txt', 'w', encoding='utf-8').write(
#       open('../shared/data/tinyshakespeare.txt', encoding='utf-8').read()[:20000])"
SHAKESPEARE = os.path.join(ROOT, "tests", "fixtures", "shakespeare_20k.txt")


def _text_file(tmp_path, num_chars=6_000):
  with open(SHAKESPEARE, encoding="utf-8") as f:
    text = f.read()[:num_chars]
  path = tmp_path / "corpus.txt"
  path.write_text(text, encoding="utf-8")
  return str(path)


def _finetune_config(text_path, **overrides):
  config = finetune_hf.get_config()
  config.init_from_hf = LLAMA
  config.data.text_path = text_path
  config.data.seq_len = 32
  config.data.read_threads = 0
  config.data.prefetch_batches = 0
  config.model.dtype = "float32"        # exact comparison with transformers' float32 logits
  config.train.batch_size = 8
  config.train.num_steps = 2
  config.train.log_every = 1
  config.train.eval_every = 100
  config.train.eval_batches = 1
  config.train.checkpoint_every = 1
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 1
  config.optim.schedule = "constant"    # the step then does not depend on num_steps: a resume recompiles nothing
  config.mesh.num_devices = 2           # fsdp over 2 devices: sharded, and quicker to compile than 8
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
  """A 2-step CYB fine-tune of the fixture (K = 1), resumed for 1 more step; its initial params kept."""
  tmp_path = tmp_path_factory.mktemp("finetune_hf")
  text_path = _text_file(tmp_path)
  workdir = str(tmp_path / "run")
  initial = []
  load = trainer._initial_params  # pylint: disable=protected-access

  def load_and_keep(*args, **kwargs):
    initial.append(load(*args, **kwargs))
    return initial[-1]

  trainer._initial_params = load_and_keep  # pylint: disable=protected-access
  try:
    first = trainer.train(_finetune_config(text_path), workdir)
    resumed = trainer.train(_finetune_config(text_path, **{"train.num_steps": 3}), workdir)
  finally:
    trainer._initial_params = load  # pylint: disable=protected-access
  return dict(text_path=text_path, workdir=workdir, initial=initial, first=first, resumed=resumed)


def test_step0_starts_as_the_pretrained_model(finetuned):
  assert len(finetuned["initial"]) == 1  # the resumed run restored its checkpoint instead
  config = configuration.settings_from_config(_finetune_config(finetuned["text_path"]), device_count=8).model
  params = finetuned["initial"][0]
  assert {"dk_head", "pause", "feedback"} <= set(params)
  golden = np.load(os.path.join(LLAMA, "golden.npz"))
  logits = jax.jit(lambda p, t: model_lib.rollout(p, t, config, 1))(params, jnp.asarray(golden["input_ids"]))
  np.testing.assert_allclose(np.asarray(logits)[:, :, 0, :config.vocab_size], golden["logits"],
                             rtol=1e-4, atol=1e-4)
  # Feedback starts at zero, so the first pause differs from step 0 only through its input embedding.
  assert np.all(np.isfinite(np.asarray(logits)))


def test_training_ran_and_resumed(finetuned):
  workdir = finetuned["workdir"]
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    steps = [r["step"] for r in map(json.loads, f) if r["kind"] == "train"]
  assert steps == [1, 2, 3]
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  assert checkpointer.all_steps()[-1] == 3
  meta = checkpointer.restore_meta(3)
  checkpointer.close()
  assert meta["model"]["rope_scaling"] == "llama3" and meta["model"]["tie_embeddings"]
  assert meta["config"]["init_from_hf"] == LLAMA
  assert np.isfinite(finetuned["resumed"]["nll_policy"])


def test_eval_report_lists_word_pieces(finetuned, tmp_path):
  config = _finetune_config(finetuned["text_path"])
  result = eval_checkpoint.evaluate_checkpoint(config, finetuned["workdir"], num_samples=2,
                                               out_dir=str(tmp_path / "eval"), progress=False)
  tokenizer = tokenizer_lib.load_pretrained_tokenizer(LLAMA)
  shown = {tokenizer.token_text(int(t)) for t in result["tokens_by_token"]}
  assert any(len(piece.strip()) > 1 for piece in shown), shown  # word pieces, not bytes or ids
  with open(result["files"]["report.md"], encoding="utf-8") as f:
    report = f.read()
  listed = [line.split("|")[1].strip() for line in report.split("## Target tokens")[1].splitlines()
            if line.startswith("| '")]
  assert listed and all(eval(name) in shown for name in listed)  # pylint: disable=eval-used
  # Samples read as text: the generated pieces joined, with pause marks.
  assert len(result["samples"]) == 2 and all("|>" in sample for sample in result["samples"])
  # Token classes: every loss token of the eval split counted in the classes of its row's text.
  settings = configuration.settings_from_config(config, device_count=8)
  expected = np.zeros(len(token_classes.CLASSES), int)
  for batch in data_pipeline.make_dataset(settings.data, "eval", int(config.train.batch_size), seed=0):
    for targets, mask in zip(batch["targets"], batch["loss_mask"]):
      expected += token_classes.classify(tokenizer_lib.token_pieces(tokenizer, targets))[mask].sum(0)
  got = {name: row["tokens"] for name, row in result["by_token_class"].items()}
  assert got == {name: int(n) for name, n in zip(token_classes.CLASSES, expected) if n}
  assert got["word-initial"] > 0 and got["continuation"] > 0
  assert sum(row["tokens"] for row in result["by_step0_entropy"].values()) == result["num_tokens"]
  assert "## Pauses by token class" in report
  assert os.path.getsize(result["files"]["pause_rate_by_class_and_entropy.png"]) > 0


def test_run_options_apply_to_a_pretrained_architecture(tmp_path):
  """The checkpoint decides the architecture; how the model runs is the config's (RUN_MODEL_FIELDS): a
  pallas attention or another block size is not silently dropped for the checkpoint's defaults."""
  config = _finetune_config(_text_file(tmp_path))
  config.model.attention = "pallas"
  config.model.attention_block = 128
  config.model.scan_layers = False
  config.model.width = 12345  # an architecture field: the checkpoint's wins
  model = configuration.settings_from_config(config, device_count=8).model
  assert (model.attention, model.attention_block, model.scan_layers) == ("pallas", 128, False)
  assert model.width != 12345


def test_text_windows_start_with_the_models_bos(tmp_path):
  config = _finetune_config(_text_file(tmp_path))
  settings = configuration.settings_from_config(config, device_count=8)
  batch = next(iter(data_pipeline.make_dataset(settings.data, "train", 4, seed=0)))
  tokenizer = tokenizer_lib.load_pretrained_tokenizer(LLAMA)
  assert tokenizer.add_bos and np.all(batch["inputs"][:, 0] == tokenizer.bos_id)
  assert np.all(batch["targets"][:, 0] != tokenizer.bos_id) and batch["loss_mask"].all()


@pytest.mark.parametrize("overrides,match", [
    ({"init_from_hf": "/nonexistent/model"}, r"config\.init_from_hf = .*neither a Hugging Face checkpoint "
                                              r"directory nor a \.gguf file"),
    ({"init_from_hf": "/nonexistent/model.gguf"}, r"config\.init_from_hf = '/nonexistent/model.gguf': no such "
                                                  r"GGUF file"),
    ({"init_from": "/tmp"}, r"init_from.*init_from_hf are both set"),
    ({"data.seq_len": 4096}, r"data\.seq_len.*max_position_embeddings"),
    ({"data.tokenizer": "byte"}, r"data\.tokenizer must be 'hf' with config\.init_from_hf"),
    ({"data.tokenizer_path": os.path.join(ROOT, "tests", "fixtures", "tokenizers", "gemma_spm")},
     r"data\.tokenizer: the tokenizer has 320 ids, the model 288 embedding rows"),
])
def test_bad_pretrained_settings_fail_before_compiling(tmp_path, monkeypatch, overrides, match):
  config = _finetune_config(_text_file(tmp_path), **overrides)
  forbid_compilation(monkeypatch)
  with pytest.raises(configuration.ConfigError, match=match) as error:
    trainer.train(config, str(tmp_path / "run"))
  assert "\n" not in str(error.value)


def test_added_tokens_past_the_embedding_are_allowed_but_never_produced(tmp_path):
  # Gemma 3's tokenizer has an added token at id 262144 of 262144 embedding rows: the same here, one
  # special token appended to the fixture's tokenizer (288 rows).
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  model_dir = tmp_path / "llama"
  shutil.copytree(LLAMA, model_dir)
  tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
  tok.add_special_tokens(["<image_soft_token>"])
  tok.save(str(model_dir / "tokenizer.json"))
  config = _finetune_config(_text_file(tmp_path), **{"init_from_hf": str(model_dir)})
  settings = configuration.settings_from_config(config, device_count=8)
  assert settings.data_info.vocab_size == settings.model.vocab_size == 288
  tokenizer = data_pipeline.configured_tokenizer(settings.data)
  assert tokenizer.vocab_size == 288 and len(tokenizer.encode("plain text")) > 0
  with pytest.raises(ValueError, match=r"'<image_soft_token>' \(id 288\).*no embedding row"):
    tokenizer.encode("a picture: <image_soft_token>")


def test_unsupported_family_fails_before_compiling(tmp_path, monkeypatch):
  model_dir = tmp_path / "gpt2"
  model_dir.mkdir()
  (model_dir / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32}))
  config = _finetune_config(_text_file(tmp_path), **{"init_from_hf": str(model_dir),
                                                      "data.tokenizer_path": LLAMA})
  forbid_compilation(monkeypatch)
  with pytest.raises(configuration.ConfigError, match="unsupported model_type 'gpt2'"):
    trainer.train(config, str(tmp_path / "run"))


@pytest.mark.parametrize("problem", ["misshapen", "missing"])
def test_a_broken_export_is_one_line_from_train_py(tmp_path, problem):
  """A loader problem (a misshapen or missing tensor) reaches the user as train.py's one `config error:` line,
  not a traceback through the trainer."""
  import shutil  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from safetensors.numpy import load_file, save_file  # pylint: disable=import-outside-toplevel
  model_dir = str(tmp_path / "model")
  shutil.copytree(LLAMA, model_dir)
  weights = os.path.join(model_dir, "model.safetensors")
  tensors = load_file(weights)
  if problem == "misshapen":
    tensors["model.layers.1.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"][:, :-1]
  else:
    del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, weights)
  text_path = _text_file(tmp_path)
  result = subprocess.run(
      [sys.executable, "train.py", "--config=configs/finetune_hf.py", f"--config.init_from_hf={model_dir}",
       f"--config.data.text_path={text_path}", "--config.data.seq_len=32", "--config.train.batch_size=2", "--config.mesh.num_devices=1",
       "--config.train.num_steps=1", f"--workdir={tmp_path / 'run'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  expected = "has shape (64, 31), the config implies (64, 32)" if problem == "misshapen" else "is missing"
  assert last.startswith("config error: config.init_from_hf: checkpoint tensor 'model.layers.1.mlp.up_proj"
                         ".weight'") and expected in last, last


# ----------------------------------------------------------------------------------------------------------
# A word-piece model trained from scratch: the BPE is trained on the training split and kept in the run.


def test_bpe_tokenizer_is_trained_into_the_run_and_reused(tmp_path):
  from helpers import tiny  # pylint: disable=import-outside-toplevel
  text_path = _text_file(tmp_path, num_chars=20_000)
  workdir = str(tmp_path / "run")
  overrides = {"data.name": "text_file", "data.text_path": text_path, "data.seq_len": 16, "data.task": {},
               "data.tokenizer": "bpe", "data.bpe_vocab_size": 300, "train.num_steps": 1,
               "train.checkpoint_every": 1, "train.eval_every": 100, "optim.schedule": "constant"}
  trainer.train(tiny("nopause", overrides), workdir)
  path = os.path.join(workdir, "tokenizer.json")
  with open(path, "rb") as f:
    saved = f.read()
  tokenizer = tokenizer_lib.make_tokenizer("bpe", path)
  assert tokenizer.vocab_size == 300
  # Trained on the first 90% of the characters only: the same training text gives the same file.
  with open(text_path, encoding="utf-8") as f:
    text = f.read()
  again = tokenizer_lib.train_bpe_tokenizer(text[:int(round(len(text) * 0.9))], 300, str(tmp_path / "t.json"))
  with open(tmp_path / "t.json", "rb") as f:
    assert f.read() == saved
  del again
  # Resume reuses the file (it is not retrained), and so does eval.py.
  os.utime(path, (0, 0))
  trainer.train(tiny("nopause", {**overrides, "train.num_steps": 2}), workdir)
  assert os.stat(path).st_mtime == 0
  result = eval_checkpoint.evaluate_checkpoint(tiny("nopause", overrides), workdir, num_samples=1,
                                               out_dir=str(tmp_path / "eval"), progress=False)
  assert any(len(tokenizer.token_text(int(t)).strip()) > 1 for t in result["tokens_by_token"])
  # eval.py on a run directory without the tokenizer says so in one line.
  os.remove(path)
  with pytest.raises(configuration.ConfigError, match=r"'bpe'.*tokenizer.json.*does not exist"):
    eval_checkpoint.evaluate_checkpoint(tiny("nopause", overrides), workdir, progress=False)


def test_sampling_a_pretrained_fine_tune_uses_its_tokenizer_and_bos(finetuned):
  from cyb_jax.inference import sampling  # pylint: disable=g-import-not-at-top
  sampler = sampling.load_sampler(finetuned["workdir"])
  tokenizer = tokenizer_lib.load_pretrained_tokenizer(LLAMA)
  ids = sampling.encode_prompt(sampler, "The quick brown")
  assert ids == tokenizer.encode_document("The quick brown").tolist()  # the model's BOS rule
  assert ids[0] == tokenizer.bos_id and tokenizer.add_bos
  records, _ = sampling.sample(sampler, [ids], sampling.Settings(max_new_tokens=4, stop_tokens=[]))
  record = records[0]
  assert record["prompt"].endswith("The quick brown")
  assert record["completion"] == "".join(t["text"] for t in record["tokens"])
  assert len(record["tokens"]) == 4 and all(len(t["dk_probs"]) == t["pauses"] + 1 for t in record["tokens"])


def test_eval_of_a_pretrained_fine_tune_needs_only_its_workdir(finetuned, tmp_path):
  """configs/finetune_hf.py names ../shared/data/tinyshakespeare.txt; this run read another file. Without
  a config, eval takes the run's own text file and pretrained source (its tokenizer) from the checkpoint:
  the same numbers as the run's config gives."""
  kwargs = dict(max_batches=1, num_samples=0, progress=False)
  saved = eval_checkpoint.evaluate_checkpoint(None, finetuned["workdir"], out_dir=str(tmp_path / "saved"),
                                              **kwargs)
  default_text = finetune_hf.get_config().data.text_path
  assert saved["config"]["data"]["text_path"] == finetuned["text_path"] != default_text
  assert saved["config"]["init_from_hf"] == LLAMA
  given = eval_checkpoint.evaluate_checkpoint(_finetune_config(finetuned["text_path"]), finetuned["workdir"],
                                              out_dir=str(tmp_path / "given"), **kwargs)
  for key in ("num_tokens", "nll_policy", "accuracy", "mean_pauses", "nll_marginal"):
    assert saved[key] == given[key], key
