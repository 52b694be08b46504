"""The training loop: sharded jitted steps, metrics, periodic eval, checkpoints and automatic resume.

`train(config, workdir)` is what `train.py` calls. In order:
  1. validate the config (one-line errors naming the key, before any compilation);
  2. build the mesh and the train state, restoring the latest checkpoint in `workdir` if there is one
     (its model shape must match) or starting from `config.init_from`'s no-pause parameters;
  3. compile the train step ahead of time;
  4. loop: one step per batch; every `log_every` steps fetch the metrics of the whole window at once (the
     device never waits for the host in between), stop on a non-finite loss naming the step; evaluate
     every `eval_every`; checkpoint every `checkpoint_every` (only after the window's losses were checked,
     so no bad state is ever saved), with each process's data-iterator state; on SIGTERM (to any process
     of a multi-process run: they agree on the step) save and return;
  5. evaluate the final model on the eval split (or its first `train.final_eval_batches` batches) and
     print a summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import sys
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cyb_jax.storage import checkpointing
from cyb_jax import compile_log
from cyb_jax import configuration
from cyb_jax.evaluation import evaluate
from cyb_jax import losses
from cyb_jax.storage import metrics_writer
from cyb_jax.training import resume
from cyb_jax.training import workdir_lock
from cyb_jax import model as model_lib
from cyb_jax import pretrained
from cyb_jax.parallel import runtime
from cyb_jax.parallel import sharding
from cyb_jax.evaluation import summary as summary_lib
from cyb_jax.training import train_state as train_state_lib
from cyb_jax.data import example as example_lib
from cyb_jax.data import fingerprint as data_fingerprint
from cyb_jax.data import pipeline as data_pipeline

log = logging.getLogger("cyb_jax")
STEP_KEYS = (example_lib.INPUTS, example_lib.TARGETS, example_lib.LOSS_MASK)


def step_keys(info: data_pipeline.DataInfo) -> tuple[str, ...]:
  """What a train step reads of a batch: the loss positions when the data lists them (pause chains are
  then computed only there), the segment ids of packed rows."""
  return STEP_KEYS + ((example_lib.LOSS_POSITIONS,) if info.loss_positions else ()) + (
      (example_lib.SEGMENT_IDS,) if info.packed else ())


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or inf; the message names the first bad step."""


def train_step(state: train_state_lib.TrainState, batch: dict, *, model_config: model_lib.ModelConfig,
               num_pauses: int, objective: configuration.ObjectiveSettings,
               optimizer: optax.GradientTransformation):
  """One optimiser step on a batch `{inputs, targets, loss_mask}` `[B, N]` (and optionally
  `loss_positions` `[B, P]`, where alone pause chains are computed, and `segment_ids` `[B, N]` of packed
  rows). Returns (state, metrics)."""
  positions_BP = batch.get(example_lib.LOSS_POSITIONS)
  mask_BN = batch[example_lib.LOSS_MASK]
  # The objective sees the tokens the chains were computed for: [B, P] at the loss positions.
  mask = mask_BN if positions_BP is None else jnp.take_along_axis(mask_BN, positions_BP, axis=1)

  def loss_fn(params):
    stats = model_lib.rollout_stats(params, batch[example_lib.INPUTS], batch[example_lib.TARGETS],
                                    model_config, num_pauses, mask_BN, positions=positions_BP,
                                    segment_ids=batch.get(example_lib.SEGMENT_IDS))
    kwargs = objective.loss_kwargs()
    if objective.name == "cyb_dp":
      kwargs["cost"] = state.dp_cost
    return losses.objective_loss(objective.name, stats, mask, **kwargs)

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  dp_cost = state.dp_cost
  if objective.name == "cyb_dp" and objective.budget is not None:
    dp_cost = losses.dual_update(dp_cost, aux.mean_pauses, budget=objective.budget, lr=objective.dual_lr)
  # `loss` is that of the parameters before this update: an update that blows them up shows in the loss
  # only one step later, after this state may have been checkpointed. So the new parameters are checked too.
  params_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))
  metrics = {"loss": loss, "mean_pauses": aux.mean_pauses, "nll_at_step": aux.nll_at_step,
             "halt_distribution": aux.halt_distribution, "grad_norm": optax.tree.norm(grads),
             "dp_cost": state.dp_cost, "tokens": aux.num_tokens, "params_finite": params_finite}
  new_state = train_state_lib.TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                                         dp_cost=dp_cost)
  return new_state, metrics


@dataclasses.dataclass(frozen=True)
class StepPlan:
  """What the trainer compiles, and for which shapes and shardings: shared by the trainer and
  `cyb_jax.compile_check` (which compiles the same step for another machine's devices).

  init_state: rng -> a fresh TrainState. abstract_state: its shapes and dtypes. state_spec, batch_spec:
  `jax.ShapeDtypeStruct`s with their shardings, the train step's arguments. make_train_step() -> the jitted step,
  `make_train_step().trace(state_spec, batch_spec).lower().compile()`; eval_args: the eval step's arguments,
  `evaluate.trace_step_metrics(eval_args[0], eval_args[1:], config, num_pauses)`.
  """

  optimizer: optax.GradientTransformation
  init_state: Any
  abstract_state: Any
  state_shardings: Any
  state_spec: Any
  batch_sharding: jax.sharding.NamedSharding
  batch_spec: dict
  make_train_step: Any
  eval_args: tuple
  batch_size: int
  seq_len: int


def plan_train_step(config: ml_collections.ConfigDict, settings: configuration.Settings,
                    mesh: jax.sharding.Mesh) -> StepPlan:
  """The train step of `config` jitted with its shardings over `mesh`, and its argument specs."""
  optimizer = train_state_lib.make_optimizer(config.optim, int(config.train.num_steps))
  model_config = settings.model

  def init_state(rng):
    return train_state_lib.create(model_lib.init(model_config, rng), optimizer,
                                  settings.objective.initial_cost)

  abstract_state = jax.eval_shape(init_state, jax.random.PRNGKey(int(config.seed)))
  state_shardings = sharding.state_shardings(abstract_state, mesh)
  # The train state's shapes, dtypes and shardings, whether it is created, loaded or restored: the train
  # step is compiled for this, so a resumed run compiles exactly what a fresh one did.
  state_spec = jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
                            abstract_state, state_shardings)
  batch_sharding = sharding.batch_sharding(mesh)
  batch_size, seq_len = int(config.train.batch_size), settings.data_info.seq_len
  step_fn = functools.partial(train_step, model_config=model_config, num_pauses=settings.num_pauses,
                              objective=settings.objective, optimizer=optimizer)

  def spec(key: str, width: int = seq_len) -> jax.ShapeDtypeStruct:
    dtype = jnp.bool_ if key == example_lib.LOSS_MASK else jnp.int32
    return jax.ShapeDtypeStruct((batch_size, width), dtype, sharding=batch_sharding)

  batch_spec = {key: spec(key, settings.data_info.loss_positions if key == example_lib.LOSS_POSITIONS
                          else seq_len) for key in step_keys(settings.data_info)}
  # Wrapped on demand, not here: a run's start-up checks (resume, init_from) come before anything is jitted.
  jitted = lambda: jax.jit(sharding.in_mesh(step_fn, mesh), in_shardings=(state_shardings, batch_sharding),  # noqa: E731
                           out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
  # What `_evaluate` passes `evaluate.step_metrics`: the state's parameters and an eval batch.
  eval_args = (state_spec.params, spec(example_lib.INPUTS), spec(example_lib.TARGETS),
               spec(example_lib.LOSS_MASK),
               spec(example_lib.SEGMENT_IDS) if settings.data_info.packed else None)
  return StepPlan(optimizer=optimizer, init_state=init_state, abstract_state=abstract_state,
                  state_shardings=state_shardings, state_spec=state_spec, batch_sharding=batch_sharding,
                  batch_spec=batch_spec, make_train_step=jitted, eval_args=eval_args, batch_size=batch_size,
                  seq_len=seq_len)


def _log_start(settings: configuration.Settings, mesh) -> None:
  log.info("jax %s, %d process(es), %d device(s) (%s), mesh %s", jax.__version__, jax.process_count(),
           jax.device_count(), jax.devices()[0].platform, dict(mesh.shape))
  log.info("model %s", settings.model)
  log.info("objective %s %s, K = %d", settings.objective.name, settings.objective.hparams,
           settings.num_pauses)


def _settings(config: ml_collections.ConfigDict, workdir: str, is_main: bool) -> configuration.Settings:
  """Validated settings; files the run creates before training (a BPE tokenizer) are written by the
  first process, which the others wait for."""
  kwargs = dict(device_count=jax.device_count(), process_count=jax.process_count(), workdir=workdir)
  configuration.check_output_dir(workdir, "--workdir")  # on every process, before any waits for another
  if jax.process_count() == 1:
    return configuration.settings_from_config(config, **kwargs)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  settings = configuration.settings_from_config(config, write_files=True, **kwargs) if is_main else None
  multihost_utils.sync_global_devices("cyb_jax: run files written")
  return settings or configuration.settings_from_config(config, write_files=False, **kwargs)


def _initial_params(config: ml_collections.ConfigDict, settings: configuration.Settings, mesh,
                    rng: jax.Array) -> Any:
  """A pretrained plain LM (`init_from` or `init_from_hf`), extended with pause parameters.

  Hugging Face weights are placed on their fsdp shardings as they are converted. The `<dk>` bias is
  calibrated on the first eval batch so that the initial `<dk>` probability is `model.dk_init_prob`
  for this trained model (a fresh head's rule would be far off).
  """
  model_config = settings.model
  hf_dir = configuration.init_from_hf(config)
  keep_pauses = configuration.init_keep_pauses(config)
  if hf_dir:
    fsdp = mesh.shape[sharding.FSDP]
    place = pretrained.sharded_place(
        lambda path, shape: jax.sharding.NamedSharding(mesh, sharding.param_spec(path, shape, fsdp)))
    run_options = {key: getattr(model_config, key) for key in configuration.RUN_MODEL_FIELDS}
    try:
      plain_config, params = pretrained.load_hf_checkpoint(hf_dir, place=place, **{**run_options,
                                                                                   "max_pauses": 0})
    except (OSError, ValueError, ImportError) as error:  # a bad export: one line, not a traceback
      raise configuration.ConfigError(f"config.init_from_hf: {error}") from None
    assert plain_config == dataclasses.replace(model_config, max_pauses=0)
    log.info("loaded the pretrained model in %s", hf_dir)
  else:
    # Restored whole on one device (whatever devices wrote it); placed on this run's fsdp shardings.
    params = _load_init_params(config.init_from, model_config, keep_pauses=keep_pauses)
    params = sharding.put_global(params, sharding.state_shardings(params, mesh))
    log.info("loaded the %s checkpoint in %s", "pause" if keep_pauses else "no-pause", config.init_from)
  if model_config.max_pauses == 0:
    return params
  batch = next(iter(data_pipeline.make_dataset(
      settings.data, "eval", int(config.train.batch_size), seed=int(config.seed),
      process_index=jax.process_index(), process_count=jax.process_count())))
  batch = sharding.global_batch({k: batch[k] for k in (example_lib.INPUTS, example_lib.LOSS_MASK)},
                                sharding.batch_sharding(mesh))
  inputs = batch[example_lib.INPUTS]
  with compile_log.announce(f"calibrating the <dk> bias on an eval batch of {inputs.shape[0]} x "
                            f"{inputs.shape[1]} (compiles a forward pass)", "calibrated the <dk> bias"):
    dk_bias = model_lib.calibrate_dk_bias(params, inputs, model_config, batch[example_lib.LOSS_MASK])
    dk_bias.block_until_ready()
  log.info("<dk> bias %.3f for an initial <dk> probability of %g", float(dk_bias.addressable_data(0)),
           model_config.dk_init_prob)
  if keep_pauses:
    # The pause parameters are the source's; the <dk> head restarts input-independent, calibrated.
    return {**params, "dk_head": {"kernel": jnp.zeros_like(params["dk_head"]["kernel"]), "bias": dk_bias}}
  return model_lib.extend_params(params, model_config, rng, dk_bias=dk_bias)


def pause_fields(model_config: model_lib.ModelConfig) -> dict:
  """What a source's kept pause parameters (`config.init_keep_pauses`) must agree on with this model: their
  shapes, and the layer whose output the feedback projection reads (as a non-negative index)."""
  return {"max_pauses": model_config.max_pauses, "pause_feedback": model_config.pause_feedback,
          "pause_feedback_layer": model_config.pause_feedback_layer % model_config.num_layers}


def _load_init_params(init_dir: str, model_config: model_lib.ModelConfig, keep_pauses: bool = False) -> Any:
  """The no-pause parameters of the run in `init_dir`, or with `keep_pauses` all of them.

  Raises ConfigError (before any compilation) for a directory without checkpoints, another vocabulary or
  model shape, or with `keep_pauses` a source whose pause parameters do not fit this model.
  """
  try:
    source = checkpointing.Checkpointer(init_dir, read_only=True)
  except FileNotFoundError:  # no checkpoints/ directory at all
    raise configuration.ConfigError(f"config.init_from = {init_dir!r} holds no checkpoint") from None
  step = source.latest_step()
  if step is None:
    raise configuration.ConfigError(f"config.init_from = {init_dir!r} holds no checkpoint")
  meta, params = source.params_or_explain(step)
  saved = meta["model"]
  if saved["vocab_size"] != model_config.vocab_size:
    raise configuration.ConfigError(
        f"config.init_from: vocabulary mismatch: the checkpoint in {init_dir!r} has vocab_size "
        f"{saved['vocab_size']}, this run's data has {model_config.vocab_size}")
  saved_shapes = model_lib.parameter_shapes(model_lib.ModelConfig(**saved))
  wanted_shapes = model_lib.parameter_shapes(model_config)
  for key, value in saved_shapes.items():
    if key not in ("max_pauses", "pause_feedback") and value != wanted_shapes[key]:
      raise configuration.ConfigError(
          f"config.init_from: model {key} is {value} in {init_dir!r}, {wanted_shapes[key]} in this config")
  source.close()
  if keep_pauses:
    theirs, ours = pause_fields(model_lib.ModelConfig(**saved)), pause_fields(model_config)
    if theirs["max_pauses"] == 0 or theirs != ours:
      raise configuration.ConfigError(
          f"config.init_keep_pauses: the checkpoint in {init_dir!r} has {theirs}, this config {ours}; "
          "keeping pause parameters needs a source trained with the same pause parameters")
    return params
  if saved["max_pauses"] > 0:
    params = {k: params[k] for k in model_lib.plain_keys(model_config)}
    log.info("init_from: %s was trained with pauses; keeping only its no-pause parameters", init_dir)
  return params


@dataclasses.dataclass
class _Window:
  """Metrics of the steps since the last fetch, still on device."""

  steps: list = dataclasses.field(default_factory=list)
  metrics: list = dataclasses.field(default_factory=list)
  started: float = dataclasses.field(default_factory=time.perf_counter)

  def add(self, step: int, metrics: dict) -> None:
    self.steps.append(step)
    self.metrics.append(metrics)

  def fetch(self) -> Optional[dict]:
    """Host copies averaged over the window; raises NonFiniteLossError at the first bad step."""
    if not self.steps:
      return None
    host = jax.device_get(self.metrics)
    for step, metrics in zip(self.steps, host):
      if not np.isfinite(metrics["loss"]):
        raise NonFiniteLossError(f"non-finite loss {float(metrics['loss'])} at step {step}; "
                                 "no checkpoint of this state was written")
      if not metrics["params_finite"]:
        raise NonFiniteLossError(f"non-finite parameters after the update at step {step} (its loss was "
                                 f"{float(metrics['loss']):.4g}); no checkpoint of this state was written")
    seconds = time.perf_counter() - self.started
    mean = {key: np.mean([m[key] for m in host], axis=0) for key in host[0] if key != "params_finite"}
    tokens = float(np.sum([m["tokens"] for m in host]))
    mean["tokens_per_s"] = tokens / max(seconds, 1e-9)
    mean["steps_per_s"] = len(self.steps) / max(seconds, 1e-9)
    del mean["tokens"]
    self.steps, self.metrics, self.started = [], [], time.perf_counter()
    return mean


# Settings that decide what a checkpoint's saved state means beyond the parameters: where the saved
# data-iterator position points (the data, the global batch, the shuffling seed, the number of processes,
# each with its own iterator), and the objective's carried state (CYB-DP's dual cost and its budget).
# Resuming with any of them changed would continue from a position or a cost that means something else.
# The model options that decide what the pause steps compute (DESIGN.md section 3); model_shape sees only
# pause_feedback's extra projection, not the others, so they are compared here: a resumed run would go on
# training a different rollout.
PAUSE_ROLLOUT_FIELDS = ("pause_context", "pause_feedback", "pause_feedback_layer", "pause_reads_token")
# In the order they are checked: the objective first, since changing it (e.g. --config=configs/ce.py into
# an old work directory) changes num_pauses too, and the objective is what the user changed.
RESUME_SENSITIVE = ("objective.name", "data", "train.batch_size", "train.skip_batches", "seed", "num_pauses",
                    "objective.budget", "process_count", *(f"model.{field}" for field in PAUSE_ROLLOUT_FIELDS))
# data.* fields that do not touch the training stream (eval-only, where it is read from, how fast).
RESUME_FREE = ("data.eval_seed", "data.eval_examples", "data.tfds_eval_split", "data.tfds_data_dir",
               "data.read_threads", "data.prefetch_batches")


def _lookup(tree: dict, dotted: str):
  node = tree
  for part in dotted.split("."):
    if not isinstance(node, dict) or part not in node:
      return _MISSING
    node = node[part]
  return node


_MISSING = object()


def _leaf_pairs(key: str, before, now) -> list:
  """(dotted key, saved value, current value) for every leaf, recursing into dicts both sides have."""
  if isinstance(before, dict) and isinstance(now, dict):
    return [pair for k in sorted(set(before) | set(now))
            for pair in _leaf_pairs(f"{key}.{k}", before.get(k, _MISSING), now.get(k, _MISSING))]
  return [(key, before, now)]


def check_resumable(saved_meta: dict, meta: dict, step: int, workdir: str) -> None:
  """Raises ConfigError naming the first setting in RESUME_SENSITIVE whose value differs between the
  checkpoint (`saved_meta`) and this run (`meta`), with both values. Settings a checkpoint predates are
  not compared, except the pause-rollout model options: a config without one built the ModelConfig
  default, so that is what it is compared as. The feedback layer is compared modulo each side's
  num_layers (from the metas' "model", where present)."""
  saved = {**saved_meta.get("config", {}), "process_count": saved_meta.get("process_count", _MISSING)}
  defaults = {f.name: f.default for f in dataclasses.fields(model_lib.ModelConfig)}
  saved["model"] = {**{field: defaults[field] for field in PAUSE_ROLLOUT_FIELDS}, **saved.get("model", {})}
  current = {**meta["config"], "process_count": meta["process_count"]}
  current["model"] = dict(current.get("model", {}))
  # -1 and num_layers - 1 are the same feedback layer: compared as layer indices in [0, L).
  for tree, model in ((saved, saved_meta.get("model")), (current, meta.get("model"))):
    layer = tree["model"].get("pause_feedback_layer")
    if isinstance(layer, int) and model and model.get("num_layers"):
      tree["model"]["pause_feedback_layer"] = layer % int(model["num_layers"])
  for key in RESUME_SENSITIVE:
    before, now = _lookup(saved, key), _lookup(current, key)
    pairs = _leaf_pairs(key, before, now)
    for name, old, new in pairs:
      if old is _MISSING or new is _MISSING or name in RESUME_FREE:
        continue
      if json.dumps(old, sort_keys=True) != json.dumps(new, sort_keys=True):
        what = "process count" if name == "process_count" else f"config.{name}"
        raise configuration.ConfigError(
            f"{what} is {new!r} here but {old!r} in the checkpoint (step {step}) in {workdir!r}: resuming "
            f"would misread its saved data position or objective state, or change the pause rollout it was "
            f"trained with; use {old!r} or a new --workdir")
  changed = data_fingerprint.change_message(saved_meta.get("data_files"), meta.get("data_files"), step, workdir)
  if changed:
    raise configuration.ConfigError(changed)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the run in `workdir` and returns the final eval results.

  The work directory is locked for the run's lifetime (workdir_lock.py: a second run there is refused at
  once); the checkpoint manager is closed however the run ends, so a failing run's last word is its error.
  """
  distributed = runtime.initialize(config)
  configuration.check_output_dir(workdir, "--workdir")  # before the lock creates it
  with workdir_lock.hold(workdir, jax.process_index()), contextlib.ExitStack() as on_exit:
    return _train(config, workdir, distributed, on_exit)


def _train(config: ml_collections.ConfigDict, workdir: str, distributed, on_exit: contextlib.ExitStack) -> dict:
  is_main = jax.process_index() == 0
  settings = _settings(config, workdir, is_main)
  mesh = sharding.make_mesh(int(config.mesh.data), int(config.mesh.fsdp), int(config.mesh.num_devices))
  _log_start(settings, mesh)
  num_steps = int(config.train.num_steps)
  plan = plan_train_step(config, settings, mesh)
  optimizer, init_state, state_shardings = plan.optimizer, plan.init_state, plan.state_shardings
  model_config = settings.model
  rng = jax.random.PRNGKey(int(config.seed))
  checkpointer = checkpointing.Checkpointer(workdir, keep=int(config.train.keep_checkpoints))
  on_exit.callback(checkpointer.close)
  meta = {"config": configuration.as_json_dict(config), "model": dataclasses.asdict(model_config),
          "process_count": jax.process_count(), "data_files": data_fingerprint.data_fingerprint(settings.data),
          "data_info": {"vocab_size": settings.data_info.vocab_size,
                        "seq_len": settings.data_info.seq_len,
                        "difficulty_names": settings.data_info.difficulty_names}}

  state_spec = plan.state_spec
  batch_size = int(config.train.batch_size)
  train_data = iter(data_pipeline.make_dataset(
      settings.data, "train", batch_size, seed=int(config.seed), process_index=jax.process_index(),
      process_count=jax.process_count(), skip_batches=configuration.skip_batches(config)))
  if configuration.skip_batches(config):
    log.info("training data starts at global batch %d (train.skip_batches)", configuration.skip_batches(config))
  latest = checkpointer.latest_step()
  if latest is not None:
    saved_meta = checkpointer.meta_or_explain(latest)
    differences = configuration.shape_differences(model_lib.ModelConfig(**saved_meta["model"]), model_config)
    if differences:
      raise configuration.ConfigError(
          f"work directory {workdir!r} holds a checkpoint (step {latest}) of a different model shape: "
          f"{differences}; use a new --workdir")
    check_resumable(saved_meta, meta, latest, workdir)
    resume.check_steps(latest, num_steps, workdir)
    summary = resume.finished_summary(workdir, latest, num_steps)
    if summary is not None:
      if is_main:
        print(resume.finished_message(workdir, num_steps), flush=True)
      return summary
    schedule_note = resume.schedule_change(saved_meta.get("config", {}), config, latest)
    if schedule_note and is_main:
      log.warning("%s", schedule_note)
    state, _ = checkpointer.restore_or_explain(latest, state_spec, train_data)
    log.info("resumed from %s at step %d", checkpointer.directory, latest)
  elif config.init_from or configuration.init_from_hf(config):
    params = _initial_params(config, settings, mesh, rng)
    state = jax.jit(lambda p: train_state_lib.create(p, optimizer, settings.objective.initial_cost),
                    out_shardings=state_shardings)(params)
  else:
    state = jax.jit(init_state, out_shardings=state_shardings)(rng)

  put_batch = functools.partial(sharding.global_batch, sharding=plan.batch_sharding)
  keys = tuple(plan.batch_spec)
  with compile_log.announce("compiling train step (" + compile_log.shape_text(
      batch_size, plan.seq_len, mesh.size, settings.num_pauses) + ")", "compiled train step"):
    compiled_step = plan.make_train_step().lower(state_spec, plan.batch_spec).compile()

  writer = metrics_writer.MetricsWriter(workdir, enabled=is_main)
  run_eval = functools.partial(_evaluate, settings=settings, put_batch=put_batch,
                               batch_size=batch_size)
  start_step = int(jax.device_get(state.step))
  window = _Window()
  progress = _progress_bar(num_steps, start_step, enabled=is_main)
  last_saved = latest

  def save(step: int, force: bool = False) -> None:
    nonlocal last_saved
    if last_saved == step:
      return
    checkpointer.save(step, state, meta, train_data, force=force)
    last_saved = step

  def flush(step: int) -> None:
    mean = window.fetch()
    if mean is None:
      return
    mean["learning_rate"] = resume.learning_rate(config.optim, num_steps, step - 1)  # step's update
    writer.write(step, "train", mean)
    progress.set_postfix(loss=f"{mean['loss']:.4f}", lr=f"{mean['learning_rate']:.2e}",
                         pauses=f"{mean['mean_pauses']:.2f}",
                         tok_s=f"{mean['tokens_per_s']:.0f}", refresh=False)

  try:
    with runtime.StopFlag(distributed) as stop:
      for step in range(start_step + 1, num_steps + 1):
        batch = next(train_data)
        state, metrics = compiled_step(state, put_batch({k: batch[k] for k in keys}))
        window.add(step, metrics)
        progress.update(1)
        is_last = step == num_steps
        stop_now = stop.requested()
        if stop_now or step % config.train.log_every == 0 or is_last or \
            step % config.train.checkpoint_every == 0:
          flush(step)
        if stop_now:
          save(step, force=True)
          checkpointer.wait()
          log.warning("SIGTERM: saved step %d to %s; exiting", step, checkpointer.directory)
          progress.close()
          return {"stopped_at": step}
        if step % config.train.checkpoint_every == 0 or is_last:
          save(step)
        if step % config.train.eval_every == 0 and not is_last:
          results = run_eval(state.params, max_batches=int(config.train.eval_batches))
          writer.write(step, "eval", results)
    progress.close()
    checkpointer.wait()
    final = _final_eval(run_eval, state.params, config, batch_size)
    final["step"] = num_steps
    writer.write(num_steps, "eval", final)
    if is_main:
      summary_text = summary_lib.format_summary(final, settings)
      print(summary_text, flush=True)
      with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(metrics_writer.to_json_types(final), f, indent=1)
    return final
  finally:
    progress.close()
    writer.close()
    checkpointer.close()


def _evaluate(params, *, settings: configuration.Settings, put_batch, batch_size: int,
              max_batches: int) -> dict:
  """Eval metrics on the eval split under the configured policy (see evaluate.py)."""
  config = settings.config
  batches = data_pipeline.make_dataset(settings.data, "eval", batch_size, seed=int(config.seed),
                                       process_index=jax.process_index(),
                                       process_count=jax.process_count())
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  # A bar on process 0 (an eval of a real model on a whole split takes minutes); cleared when done.
  with tqdm(total=max_batches or None, desc="eval", unit="batch", leave=False,
            disable=jax.process_index() != 0) as bar:
    return evaluate.evaluate(params, iter(batches), settings.model, settings.num_pauses,
                             policy=config.eval.policy, tau=config.eval.tau, q=config.eval.q,
                             difficulty_names=settings.data_info.difficulty_names,
                             tau_sweep=tuple(config.eval.tau_sweep) if settings.num_pauses else (),
                             max_batches=max_batches, put_batch=put_batch, progress=lambda: bar.update(1))


def _final_eval(run_eval, params, config: ml_collections.ConfigDict, batch_size: int) -> dict:
  """The end-of-run eval on `train.final_eval_batches` batches (0 = the whole eval split), saying in the
  log what it covers: at real size the whole split can take many minutes."""
  batches = configuration.final_eval_batches(config)
  what = "the whole eval split" if not batches else (
      "its first batch" if batches == 1 else f"its first {batches} batches")
  is_main = jax.process_index() == 0
  if is_main:
    log.info("final eval on %s (batches of %d; train.final_eval_batches = %d, 0 = all)...", what,
             batch_size, batches)
  start = time.perf_counter()
  final = run_eval(params, max_batches=batches)
  if is_main:
    count = final["num_batches"]
    log.info("final eval covered %d scored tokens in %d batch%s (%s) in %.1f s", final["num_tokens"], count,
             "es" * (count != 1), what, time.perf_counter() - start)
  return final


def _progress_bar(total: int, initial: int, enabled: bool):
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step",
              dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
