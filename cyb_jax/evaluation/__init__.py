"""Evaluation: metrics over batches (`evaluate.py`), a checkpoint's report (`eval_checkpoint.py`,
`report.py`, behind eval.py), the end-of-run summary (`summary.py`), the data-efficiency multiple
(`efficiency.py`)."""
