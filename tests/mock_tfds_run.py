"""Runs a script with `tfds.testing.mock_data` standing in for a prepared TFDS dataset (tests only):

    python tests/mock_tfds_run.py NUM_EXAMPLES SCRIPT.py ARGS...

Mock records are made from a fixed seed, so every process (and every rerun) sees the same documents.
"""

import os
import runpy
import sys

import tensorflow_datasets as tfds

if __name__ == "__main__":
  num_examples, script = int(sys.argv[1]), sys.argv[2]
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
  sys.argv = [script] + sys.argv[3:]
  with tfds.testing.mock_data(num_examples=num_examples):
    runpy.run_path(script, run_name="__main__")
