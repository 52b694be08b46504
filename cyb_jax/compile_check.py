"""Does a config fit an accelerator? Compile its train and eval steps for a TPU topology, on any machine.

  python -m cyb_jax.compile_check --config=configs/x.py [--config.a.b=v ...] --topology=v5e:2x2

lowers and compiles the trainer's own jitted train step (`trainer.plan_train_step`: the same function,
shardings, donation and mesh rule as `train.py`) and the eval step (`evaluate.step_metrics`) for the
devices of `--topology`, with `jax.ShapeDtypeStruct` arguments: no arrays are made and no weights are
read (an `init_from_hf` model's shape comes from the checkpoint's config.json or GGUF metadata). It prints,
per device, the compiled program's argument, output, aliased (donated), temporary and code bytes from
`memory_analysis()` against the chip's HBM, whether it fits and by how much, the compile time, and the
step's matmul FLOPs per device (counted on its traced program by matmul_flops.py, loops by their trip
counts: XLA's `cost_analysis()` counts a scanned layer loop's body once).

TPU topologies (`v5e:2x2`, `v6e:2x4`, `v5p:2x2x1`, `v4:2x2x1`, ...) need `libtpu` (`pip install -e
'.[tpu]'`): `jax.experimental.topologies.get_topology_desc` then gives that topology's devices and the
real TPU compiler runs on this CPU (DESIGN.md section 11; maxtext's train_compile.py does the same).
`--topology=cpu:N` compiles for N local CPU devices instead (no libtpu; what the tests run). Exit status:
0 when every step fits (or the devices have no HBM entry), 2 when one does not, 1 for a usage error.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
import time
from typing import Any, Optional, Sequence

from absl import app
from absl import flags

from cyb_jax import cli

GIB = 1024 ** 3
# HBM per chip, GiB. Sources: Google Cloud TPU system architecture pages,
# https://cloud.google.com/tpu/docs/v4 (32 GiB), https://cloud.google.com/tpu/docs/v5e (16 GiB),
# https://cloud.google.com/tpu/docs/v5p (95 GiB), https://cloud.google.com/tpu/docs/v6e (32 GiB).
# Nominal capacity: the runtime keeps a little of it, so a program within a few hundred MiB of the limit
# may still fail to load (the TPU compiler itself refuses programs over the usable amount).
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
LIBTPU_HINT = "pip install -e '.[tpu]'  (libtpu==0.0.42.*, the version jax[tpu] pins for jax 0.10.2)"
STEPS = ("train", "eval")
LIBTPU_ENV = {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost"}


class UsageError(ValueError):
  """A bad --topology or --steps: one line, exit status 1."""


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str             # as given, e.g. "v5e:2x2" or "cpu:8"
  chip: str             # "v5e", ..., or "cpu"
  shape: str            # "2x2"; for cpu the device count


def parse_topology(text: str) -> Topology:
  """`cpu`, `cpu:N` or `<chip>:<AxB[xC]>` with a chip of HBM_GIB; raises UsageError (one line) otherwise."""
  chip, _, shape = text.strip().partition(":")
  chip = chip.lower()
  if chip == "cpu":
    if shape and not (shape.isdigit() and int(shape) >= 1):
      raise UsageError(f"--topology={text}: cpu takes a device count, e.g. cpu:8")
    return Topology(text, "cpu", shape)
  if chip not in HBM_GIB:
    raise UsageError(f"--topology={text}: unknown chip {chip!r}; known: cpu[:N], "
                     f"{', '.join(sorted(HBM_GIB))} (e.g. v5e:2x2)")
  parts = shape.split("x")
  if not shape or not all(p.isdigit() and int(p) >= 1 for p in parts) or len(parts) not in (2, 3):
    raise UsageError(f"--topology={text}: expected {chip}:AxB or {chip}:AxBxC chips, e.g. {chip}:2x2")
  return Topology(text, chip, shape)


def libtpu_available() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def topology_devices(topology: Topology) -> list:
  """The devices to compile for: a TPU topology's (libtpu needed) or the first N local CPU devices."""
  import jax  # pylint: disable=g-import-not-at-top
  if topology.chip == "cpu":
    devices = jax.devices("cpu")
    wanted = int(topology.shape) if topology.shape else len(devices)
    if wanted > len(devices):
      raise UsageError(f"--topology={topology.name}: only {len(devices)} CPU devices here (run with "
                       f"XLA_FLAGS=--xla_force_host_platform_device_count={wanted})")
    return devices[:wanted]
  if not libtpu_available():
    raise UsageError(f"--topology={topology.name} needs libtpu to compile for TPU: {LIBTPU_HINT}")
  # Read when libtpu loads (here, not at import): no TPU is opened, so a second compile check, a test or a
  # training job on this host's own TPU may hold libtpu's lock file at the same time; and no cloud
  # metadata server is asked about a TPU this machine does not have (which only prints warnings).
  for key, value in LIBTPU_ENV.items():
    os.environ.setdefault(key, value)
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    return list(topologies.get_topology_desc(topology_name=f"{topology.chip}:{topology.shape}",
                                             platform="tpu").devices)
  except Exception as error:  # pylint: disable=broad-except  (libtpu's errors are JaxRuntimeErrors)
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise UsageError(f"--topology={topology.name}: {first}") from None


@dataclasses.dataclass(frozen=True)
class Memory:
  """Per-device bytes of one compiled program (`compiled.memory_analysis()`)."""

  arguments: int
  outputs: int
  aliased: int       # outputs that reuse a donated argument's buffer (the train state)
  temporaries: int
  code: int

  @classmethod
  def from_analysis(cls, stats: Any) -> "Memory":
    return cls(arguments=int(stats.argument_size_in_bytes), outputs=int(stats.output_size_in_bytes),
               aliased=int(stats.alias_size_in_bytes), temporaries=int(stats.temp_size_in_bytes),
               code=int(stats.generated_code_size_in_bytes))

  @property
  def total(self) -> int:
    """Peak bytes the program holds at once on a device: arguments, outputs not written into a donated
    argument, temporaries and the program itself."""
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.code


def fits_text(total: int, hbm_gib: Optional[float]) -> str:
  """"yes, 11.20 GiB spare (30% used)" / "NO, 3.10 GiB over (119% used)"; "n/a" without an HBM size."""
  if hbm_gib is None:
    return "n/a (no HBM size)"
  hbm = hbm_gib * GIB
  used = f"{100 * total / hbm:.0f}% used"
  if total <= hbm:
    return f"yes, {(hbm - total) / GIB:.2f} GiB spare ({used})"
  return f"NO, {(total - hbm) / GIB:.2f} GiB over ({used})"


@dataclasses.dataclass(frozen=True)
class StepResult:
  step: str
  compile_s: float
  memory: Optional[Memory]
  flops: Optional[float]
  error: str = ""      # the compiler's refusal (e.g. out of HBM), one line

  def fits(self, hbm_gib: Optional[float]) -> bool:
    if self.error:
      return False
    return hbm_gib is None or self.memory.total <= hbm_gib * GIB


def table(results: Sequence[StepResult], hbm_gib: Optional[float]) -> str:
  """A markdown table, one row per compiled step, in bytes per device (GiB, or MiB for small programs)."""
  largest = max([r.memory.total for r in results if r.memory] + [0])
  unit, size = ("GiB", GIB) if largest >= GIB or hbm_gib is not None else ("MiB", 1024 ** 2)
  amount = lambda n: f"{n / size:.2f}"  # noqa: E731
  of = f"{hbm_gib:g} GiB" if hbm_gib is not None else "HBM"
  lines = [f"| step | compile (s) | arguments | outputs | aliased | temporaries | code | total ({unit}) "
           f"| fits in {of} | GFLOP per device |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
  for r in results:
    if r.error:
      lines.append(f"| {r.step} | {r.compile_s:.1f} | | | | | | | NO: {r.error} | |")
      continue
    m = r.memory
    flops = f"{r.flops / 1e9:,.1f}" if r.flops is not None else "n/a"
    lines.append(f"| {r.step} | {r.compile_s:.1f} | {amount(m.arguments)} | {amount(m.outputs)} "
                 f"| {amount(m.aliased)} | {amount(m.temporaries)} | {amount(m.code)} | {amount(m.total)} "
                 f"| {fits_text(m.total, hbm_gib)} | {flops} |")
  return "\n".join(lines)


def _compile(step: str, traced_fn, num_devices: int) -> tuple[StepResult, Any]:
  """Compiles `traced_fn()` (a `jax.stages.Traced`), timing tracing, lowering and compilation together:
  (result, compiled), where the compiler's out-of-memory refusal becomes a NO row (and compiled None).
  FLOPs per device: the traced (global) program's matmul FLOPs over the devices (matmul_flops.py; XLA's
  own cost analysis counts a scanned layer loop's body once)."""
  from cyb_jax import matmul_flops  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  traced = traced_fn()
  flops = matmul_flops.matmul_flops(traced.jaxpr) / num_devices
  try:
    compiled = traced.lower().compile()
  except Exception as error:  # pylint: disable=broad-except
    message = " ".join(str(error).split())
    if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
      raise
    return StepResult(step, time.perf_counter() - start, None, flops, error=message[:300]), None
  seconds = time.perf_counter() - start
  memory = Memory.from_analysis(compiled.memory_analysis())
  return StepResult(step, seconds, memory, flops), compiled


@dataclasses.dataclass
class Report:
  header: str
  results: list
  hbm_gib: Optional[float]
  plan: Any = None            # trainer.StepPlan: its shardings, for the tests
  compiled: dict = dataclasses.field(default_factory=dict)

  def text(self) -> str:
    return self.header + "\n\n" + table(self.results, self.hbm_gib)

  @property
  def all_fit(self) -> bool:
    return all(r.fits(self.hbm_gib) for r in self.results)


def check(config, topology: Topology, steps: Sequence[str] = STEPS, keep_compiled: bool = False) -> Report:
  """Compiles `steps` of `config` for `topology` and returns the report. Raises UsageError for a bad
  topology, configuration.ConfigError for a bad config (both one line)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cyb_jax import compile_log  # pylint: disable=g-import-not-at-top
  from cyb_jax import configuration  # pylint: disable=g-import-not-at-top
  from cyb_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  from cyb_jax.parallel import sharding  # pylint: disable=g-import-not-at-top
  from cyb_jax.training import trainer  # pylint: disable=g-import-not-at-top

  devices = topology_devices(topology)
  settings = configuration.settings_from_config(config, device_count=len(devices), workdir=None,
                                                write_files=False)
  mesh = sharding.make_mesh(int(config.mesh.data), int(config.mesh.fsdp), int(config.mesh.num_devices),
                            devices=devices)
  plan = trainer.plan_train_step(config, settings, mesh)
  hbm = HBM_GIB.get(topology.chip)
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(plan.abstract_state.params))
  model = settings.model
  kind = devices[0].device_kind
  header = (f"compile check: {topology.name}, {mesh.size} x {kind}"
            + (f" ({hbm:g} GiB HBM each)" if hbm is not None else "")
            + f", mesh data {mesh.shape[sharding.DATA]} x fsdp {mesh.shape[sharding.FSDP]}\n"
            f"model: {params / 1e6:.1f}M parameters, {model.num_layers} layers, width {model.width}, "
            f"vocab {model.vocab_size}, {model.dtype}, attention {model.attention}, remat {model.remat}\n"
            f"step: {settings.objective.name}, " + compile_log.shape_text(
                plan.batch_size, plan.seq_len, mesh.size, settings.num_pauses)
            + f" ({plan.batch_size // mesh.size} row(s) per device)\n"
            "memory: per device, from compiled.memory_analysis(); total = arguments + outputs - aliased "
            "+ temporaries + code; GFLOP: the step's matmul FLOPs (loops by their trip counts) / devices")
  report = Report(header=header, results=[], hbm_gib=hbm, plan=plan)
  for step in steps:
    if step == "train":
      trace = lambda: plan.make_train_step().trace(plan.state_spec, plan.batch_spec)  # noqa: E731
    else:
      trace = lambda: evaluate.trace_step_metrics(plan.eval_args[0], plan.eval_args[1:], model,  # noqa: E731
                                                  settings.num_pauses)
    result, compiled = _compile(step, trace, mesh.size)
    report.results.append(result)
    if keep_compiled:
      report.compiled[step] = compiled
  return report


def define_flags() -> None:
  """The command's flags (defined only when run as a command: importing this module defines none)."""
  global _CONFIG, _TOPOLOGY, _STEPS
  _CONFIG = cli.define_config_flag("Training config file whose steps to compile.")
  _TOPOLOGY = flags.DEFINE_string("topology", "cpu", "What to compile for: a TPU topology such as v5e:2x2, "
                                  "v6e:2x4, v5p:2x2x1 (needs libtpu), or cpu[:N] for local CPU devices.")
  _STEPS = flags.DEFINE_list("steps", list(STEPS), "Which steps to compile: train, eval or both.")


_CONFIG = _TOPOLOGY = _STEPS = None


def parse_steps(steps: Sequence[str]) -> list:
  if not steps or any(s not in STEPS for s in steps):
    raise UsageError(f"--steps={','.join(steps)}: expected train, eval or train,eval")
  return list(steps)


def main(argv) -> None:
  del argv
  config = cli.loaded_config(_CONFIG)
  cli.quiet_libraries()
  try:
    topology = parse_topology(_TOPOLOGY.value)
    steps = parse_steps(_STEPS.value)
    if topology.chip != "cpu" and not libtpu_available():
      raise UsageError(f"--topology={topology.name} needs libtpu to compile for TPU: {LIBTPU_HINT}")
    if topology.chip == "cpu" and topology.shape and "xla_force_host_platform_device_count" not in \
        os.environ.get("XLA_FLAGS", ""):
      import jax  # pylint: disable=g-import-not-at-top
      jax.config.update("jax_num_cpu_devices", int(topology.shape))
    from cyb_jax import configuration  # pylint: disable=g-import-not-at-top
    try:
      report = check(config, topology, steps)
    except configuration.ConfigError as error:
      sys.exit(f"config error: {error}")
  except UsageError as error:
    sys.exit(f"compile_check: {error}")
  print(report.text(), flush=True)
  if not report.all_fit:
    sys.exit(2)


if __name__ == "__main__":
  # The TPU is compiled for, not run on: the host's own backend (and no TPU runtime) is what executes.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
