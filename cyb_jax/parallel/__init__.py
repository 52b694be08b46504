"""Devices, meshes and processes.

  sharding.py   the (data, fsdp) mesh and the shardings of batches and train state
  runtime.py    joining a multi-process run (jax.distributed), preemption agreed across processes
  launcher.py   a local multi-process launcher (`python -m cyb_jax.launch`), a test and debugging aid
"""
