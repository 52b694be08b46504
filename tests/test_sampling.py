"""sample.py and cyb_jax/inference/sampling.py on tiny trained checkpoints: byte-level and BPE text models,
a plain LM (the synthetic task's sampling is in test_eval.py, on its trained run); the output file's records against the policy's own rule, and one-line errors.
(Ragged batches, stop tokens, top-k/top-p and the sampling distribution are tested in test_generate.py.)"""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cyb_jax.inference import sampling
from cyb_jax.training import trainer
from helpers import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = ("Now is the winter of our discontent made glorious summer by this sun of York; señor, über alles. "
        * 30)
TAU = 0.5


def _train(workdir, overrides):
  trainer.train(tiny("", {"train.num_steps": 2, "train.eval_every": 100, "train.checkpoint_every": 2,
                          **overrides}), str(workdir))
  return str(workdir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("sampling")
  corpus = root / "corpus.txt"
  corpus.write_text(TEXT, encoding="utf-8")
  text = {"data.name": "text_file", "data.text_path": str(corpus), "data.task": {}, "data.seq_len": 32}
  return {
      "byte": _train(root / "byte", text),
      "bpe": _train(root / "bpe", {**text, "data.tokenizer": "bpe", "data.bpe_vocab_size": 300}),
  }


def _run(args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, "sample.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _check_records(records, prompts, num_pauses):
  assert [r["prompt"] for r in records] == prompts  # prompt order
  for record in records:
    assert record["completion"] == "".join(t["text"] for t in record["tokens"])
    assert 1 <= len(record["tokens"]) <= 8
    for token in record["tokens"]:
      pauses, dk = token["pauses"], token["dk_probs"]
      assert 0 <= pauses <= num_pauses and len(dk) == pauses + 1
      assert all(0.0 <= d <= 1.0 for d in dk)
      # The threshold rule, read back from the file: it paused exactly while P(<dk>) > tau.
      assert all(d > TAU for d in dk[:-1])
      assert pauses == num_pauses or dk[-1] <= TAU


def test_sample_py_end_to_end_on_byte_and_bpe_text_models(runs, tmp_path):
  prompts_file = tmp_path / "prompts.jsonl"
  prompts = ["Now is the", "señor", "summer by this sun of"]
  prompts_file.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in prompts),
                          encoding="utf-8")
  txt_file = tmp_path / "prompts.txt"
  txt_file.write_text("\n".join(prompts) + "\n", encoding="utf-8")
  outputs = {name: tmp_path / f"{name}.jsonl" for name in ("byte", "bpe")}
  processes = {
      "byte": _run([f"--workdir={runs['byte']}", f"--prompts_file={prompts_file}", "--max_new_tokens=8",
                    f"--output={outputs['byte']}", f"--tau={TAU}"]),
      "bpe": _run([f"--workdir={runs['bpe']}", f"--prompts_file={txt_file}", "--max_new_tokens=8",
                   f"--output={outputs['bpe']}", f"--tau={TAU}", "--batch_size=2"]),
  }
  for name, process in processes.items():
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, (name, stderr[-3000:])
    records = [json.loads(line) for line in outputs[name].read_text(encoding="utf-8").splitlines()]
    _check_records(records, prompts, num_pauses=2)
    assert f"{len(prompts)} prompts" in stdout.strip().splitlines()[-1]
    assert "tokens/s" in stdout and "mean pauses per token" in stdout
  # The BPE run's tokenizer is the one trained beside the checkpoint: word pieces, not bytes.
  bpe = sampling.load_sampler(runs["bpe"])
  assert bpe.tokenizer.vocab_size == 300
  assert len(sampling.encode_prompt(bpe, "Now is the winter")) < len("Now is the winter")


def test_sample_py_errors_are_one_line(runs, tmp_path):
  long_prompt = "x" * 40
  cases = {
      "too_long": [f"--workdir={runs['byte']}", f"--prompt={long_prompt}", "--max_new_tokens=8"],
      "unknown_policy": [f"--workdir={runs['byte']}", "--prompt=Now", "--policy=sometimes"],
      "no_checkpoint": [f"--workdir={tmp_path}", "--prompt=Now"],
  }
  processes = {name: _run(args) for name, args in cases.items()}
  lines = {}
  for name, process in processes.items():
    _, stderr = process.communicate(timeout=600)
    assert process.returncode != 0 and "Traceback" not in stderr, (name, stderr[-2000:])
    lines[name] = stderr.strip().splitlines()[-1]
  # The tiny text model's context is 32 tokens: 40 + 8 do not fit.
  assert lines["too_long"] == ("sample error: prompt 0 has 40 tokens; the model's context of 32 leaves room "
                               "for 24 with --max_new_tokens=8")
  assert lines["unknown_policy"].startswith("sample error: policy must be one of")
  # A plain LM (no pause parameters) asked to pause.
  byte = sampling.load_sampler(runs["byte"])
  plain = dataclasses.replace(byte, model=dataclasses.replace(byte.model, max_pauses=0), num_pauses=0)
  with pytest.raises(ValueError, match=r"^this checkpoint has no pause parameters \(model.max_pauses = 0\)"):
    sampling.check(plain, [[1, 2]], sampling.Settings(policy="always", max_new_tokens=4), pauses_requested=True)
  assert sampling.check(plain, [[1, 2]], sampling.Settings(max_new_tokens=4)) == 0  # by default it simply does not pause
  assert lines["no_checkpoint"].startswith("sample error: --workdir") and "holds no checkpoint" in lines["no_checkpoint"]


def test_sample_py_argument_errors_come_before_any_prompt_is_printed(runs):
  cases = {  # each at batch size 1, where the prompt is streamed: "Hello|>" used to be printed first
      "top_p": (["--top_p=2"], "sample error: top_p must lie in (0, 1] (1 = off), got 2.0"),
      "temperature": (["--temperature=-1"], "sample error: temperature must be a finite number >= 0, got -1.0"),
      "policy": (["--policy=sometimes"], "sample error: policy must be one of "),
      "batch_size": (["--batch_size=0"], "sample error: --batch_size must be >= 1, got 0"),
  }
  processes = {name: _run([f"--workdir={runs['byte']}", "--prompt=Hello", *args])
               for name, (args, _) in cases.items()}
  for name, process in processes.items():
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode != 0 and "Traceback" not in stderr, (name, stderr[-2000:])
    assert stdout == "", (name, stdout)
    assert stderr.strip().splitlines()[-1].startswith(cases[name][1]), (name, stderr[-500:])


def test_prompts_files_and_stop_tokens(runs, tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "a"}\n{"text": "b"}\n', encoding="utf-8")
  with pytest.raises(ValueError, match=r"bad\.jsonl:2: expected a JSON object"):
    sampling.read_prompts_file(str(bad))
  with pytest.raises(ValueError, match="does not exist"):
    sampling.read_prompts_file(str(tmp_path / "none.txt"))
  sampler = sampling.load_sampler(runs["byte"])
  assert sampling.stop_ids(sampler, [".", "#10"]) == [ord("."), 10]
  with pytest.raises(ValueError, match="not one"):
    sampling.stop_ids(sampler, ["ab"])
  # A stop token ends each completion right after it.
  records, _ = sampling.sample(sampler, [sampling.encode_prompt(sampler, "Now is the")],
                               sampling.Settings(max_new_tokens=8, stop_tokens=[ord(" ")], tau=TAU))
  texts = [t["text"] for t in records[0]["tokens"]]
  assert " " not in "".join(texts[:-1]) and (texts[-1] == " " or len(texts) == 8)


def test_a_prompt_typed_with_its_bos_text_gets_one_bos():
  # A Llama 3-style model starts every sequence with <|begin_of_text|> (285); a user who types it (as in a
  # chat template) must not get it twice, and other special tokens in a prompt stay control tokens.
  from cyb_jax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  directory = os.path.join(os.path.dirname(__file__), "fixtures", "tokenizers", "llama3_style")
  tokenizer = tokenizer_lib.load_pretrained_tokenizer(directory)
  sampler = sampling.Sampler(params=None, model=None, num_pauses=0, data=None, tokenizer=tokenizer, step=0)
  hello = tokenizer.encode("Hello").tolist()
  assert sampling.encode_prompt(sampler, "Hello") == [285] + hello
  assert sampling.encode_prompt(sampler, "<|begin_of_text|>Hello") == [285] + hello
  assert sampling.encode_prompt(sampler, "Hello<|eot_id|>") == [285] + hello + [287]
