"""Tests of cyb_jax/compile_check.py: its flags and one-line errors, the memory and fits arithmetic, and the
whole path on the 8 fake CPU devices (the same code a TPU topology runs), whose compiled steps must take
exactly the shardings of the trainer's. The TPU compile itself runs only where libtpu is installed."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import jax
import pytest

from cyb_jax import compile_check
from cyb_jax.training import trainer
from helpers import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1024 ** 3


def run_command(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
  env = {**os.environ, **(env_extra or {})}
  return subprocess.run([sys.executable, "-m", "cyb_jax.compile_check", "--config=tests/tiny_config.py",
                         *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def one_line(stderr: str) -> str:
  lines = [line for line in stderr.strip().splitlines() if line.strip()]
  assert len(lines) == 1, stderr
  return lines[0]


# ----------------------------------------------------------------------------------------------------------
# Flags and errors.


@pytest.mark.parametrize("text, chip, shape", [("v5e:2x2", "v5e", "2x2"), ("V6E:2x4", "v6e", "2x4"),
                                               ("v5p:2x2x1", "v5p", "2x2x1"), ("cpu:8", "cpu", "8"),
                                               ("cpu", "cpu", "")])
def test_parse_topology(text, chip, shape):
  topology = compile_check.parse_topology(text)
  assert (topology.chip, topology.shape, topology.name) == (chip, shape, text)


@pytest.mark.parametrize("text, words", [("v9z:2x2", "unknown chip 'v9z'"), ("v5e", "expected v5e:AxB"),
                                         ("v5e:2xq", "expected v5e:AxB"), ("cpu:0", "device count"),
                                         ("tpu:2x2", "unknown chip")])
def test_bad_topology_is_one_line(text, words):
  with pytest.raises(compile_check.UsageError, match=words) as error:
    compile_check.parse_topology(text)
  assert "\n" not in str(error.value)


def test_bad_steps():
  assert compile_check.parse_steps(["eval"]) == ["eval"]
  with pytest.raises(compile_check.UsageError, match="expected train, eval"):
    compile_check.parse_steps(["train", "backward"])


def test_too_many_cpu_devices_is_one_line():
  with pytest.raises(compile_check.UsageError, match="only 8 CPU devices here"):
    compile_check.topology_devices(compile_check.parse_topology("cpu:16"))


@pytest.mark.skipif(compile_check.libtpu_available(), reason="libtpu is installed here")
def test_command_without_libtpu_says_what_to_install():
  result = run_command("--topology=v5e:2x2")
  assert result.returncode == 1
  line = one_line(result.stderr)
  assert "needs libtpu" in line and "pip install" in line and "libtpu==0.0.42" in line


def test_command_unknown_topology_and_bad_key_are_one_line():
  result = run_command("--topology=v9z:2x2")
  assert result.returncode == 1
  assert one_line(result.stderr) == ("compile_check: --topology=v9z:2x2: unknown chip 'v9z'; known: cpu[:N], "
                                     "v4, v5e, v5p, v6e (e.g. v5e:2x2)")
  result = run_command("--topology=cpu", "--config.train.no_such_key=3")
  assert result.returncode == 1
  assert "no_such_key" in one_line(result.stderr)
  result = run_command("--topology=cpu", "--config.train.batch_size=12")  # 12 rows on 8 devices
  assert result.returncode == 1
  assert one_line(result.stderr).startswith("config error: config.train.batch_size = 12 is not divisible")


# ----------------------------------------------------------------------------------------------------------
# Memory and fits arithmetic, on a stand-in for compiled.memory_analysis().


def fake_stats(arguments, outputs, aliased, temporaries, code):
  return types.SimpleNamespace(argument_size_in_bytes=arguments, output_size_in_bytes=outputs,
                               alias_size_in_bytes=aliased, temp_size_in_bytes=temporaries,
                               generated_code_size_in_bytes=code, host_temp_size_in_bytes=7)


def test_memory_total_counts_donated_outputs_once():
  # A train step: 3 GiB of state in, the same 3 GiB out into the donated buffers, 0.5 GiB of metrics.
  memory = compile_check.Memory.from_analysis(fake_stats(3 * GIB, 3 * GIB + GIB // 2, 3 * GIB, 9 * GIB, GIB // 4))
  assert memory.total == 3 * GIB + GIB // 2 + 9 * GIB + GIB // 4   # 12.75 GiB
  assert compile_check.fits_text(memory.total, 16) == "yes, 3.25 GiB spare (80% used)"
  assert compile_check.fits_text(memory.total, 8) == "NO, 4.75 GiB over (159% used)"
  assert compile_check.fits_text(memory.total, None) == "n/a (no HBM size)"
  fitting = compile_check.StepResult("train", 1.0, memory, 2e12)
  assert fitting.fits(16) and not fitting.fits(12) and fitting.fits(None)


def test_table_rows():
  memory = compile_check.Memory.from_analysis(fake_stats(GIB, GIB, GIB, 2 * GIB, 0))
  refused = compile_check.StepResult("eval", 3.0, None, None, error="RESOURCE_EXHAUSTED: Ran out of memory")
  text = compile_check.table([compile_check.StepResult("train", 12.34, memory, 5.5e12), refused], 16)
  header, _, train_row, eval_row = text.splitlines()
  assert "total (GiB)" in header and "fits in 16 GiB" in header
  assert train_row == ("| train | 12.3 | 1.00 | 1.00 | 1.00 | 2.00 | 0.00 | 3.00 | yes, 13.00 GiB spare (19% used) "
                       "| 5,500.0 |")
  assert eval_row.startswith("| eval | 3.0 |") and "NO: RESOURCE_EXHAUSTED" in eval_row
  assert not refused.fits(None)


def test_hbm_table():
  assert compile_check.HBM_GIB == {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}


# ----------------------------------------------------------------------------------------------------------
# The whole path on the 8 fake CPU devices, against what the trainer compiles.


def test_cpu_compile_takes_the_trainers_shardings(tmp_path, monkeypatch):
  config = tiny(overrides={"train.num_steps": 1, "train.final_eval_batches": 1})
  report = compile_check.check(config, compile_check.parse_topology("cpu:8"), keep_compiled=True)
  assert [r.step for r in report.results] == ["train", "eval"] and report.all_fit
  for result in report.results:
    assert result.memory.arguments > 0 and result.memory.temporaries > 0 and result.compile_s > 0
  train_memory = report.results[0].memory
  assert train_memory.aliased > 0                          # the train state is donated, as in the trainer
  assert "8 x cpu" in report.text() and "K=2, batch 8 x 16, 8 devices" in report.text()

  # What trainer.train compiles for the same config: every .lower(...).compile() of the run, in order.
  compiled = []
  original = jax.stages.Lowered.compile

  def recording(self, *args, **kwargs):
    compiled.append(original(self, *args, **kwargs))
    return compiled[-1]

  monkeypatch.setattr(jax.stages.Lowered, "compile", recording)
  trainer.train(config, str(tmp_path / "run"))
  theirs_train, theirs_eval = compiled[0], compiled[1]
  ours_train, ours_eval = report.compiled["train"], report.compiled["eval"]
  assert ours_train.input_shardings == theirs_train.input_shardings
  assert ours_train.output_shardings == theirs_train.output_shardings
  assert ours_train.in_avals == theirs_train.in_avals
  assert ours_eval.input_shardings == theirs_eval.input_shardings
  assert ours_eval.in_avals == theirs_eval.in_avals
  # Not all replicated: the fsdp rule and the batch split are what is compared.
  assert any(not s.is_fully_replicated for s in jax.tree.leaves(ours_train.input_shardings))


def test_cpu_command_prints_the_table():
  result = run_command("--topology=cpu:8", "--steps=train", "--config.num_pauses=1")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0] == "compile check: cpu:8, 8 x cpu, mesh data 8 x fsdp 1"
  assert "K=1, batch 8 x 16, 8 devices (1 row(s) per device)" in lines[2]
  rows = [line for line in lines if line.startswith("| train |")]
  assert len(rows) == 1 and "n/a (no HBM size)" in rows[0]


@pytest.mark.skipif(not compile_check.libtpu_available(),
                    reason="needs libtpu (pip install -e '.[tpu]'); CI does not install it")
def test_tpu_compile_for_v5e():
  """The real TPU compiler, run on this CPU for a v5e:2x2 topology's devices (libtpu only)."""
  report = compile_check.check(tiny(), compile_check.parse_topology("v5e:2x2"), keep_compiled=True)
  assert report.hbm_gib == 16 and report.all_fit
  assert "TPU v5 lite" in report.text()
  for step in ("train", "eval"):
    shardings = jax.tree.leaves(report.compiled[step].input_shardings)
    assert {d.platform for s in shardings for d in s.device_set} == {"tpu"}
  train = report.results[0]
  assert train.memory.arguments > 0 and train.flops and train.flops > 0
