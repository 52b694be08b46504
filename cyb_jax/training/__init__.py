"""Training: the loop (`trainer.py`), the train state and optimiser (`train_state.py`), orbax checkpoints
(`checkpointing.py`), metrics files (`metrics_writer.py`)."""
