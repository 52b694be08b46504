"""Inference: pause policies (`policies.py`), jitted generation with adaptive pauses and teacher forcing
(`generate.py`), and text from a checkpoint (`sampling.py`, behind sample.py)."""
