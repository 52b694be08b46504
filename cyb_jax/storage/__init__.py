"""What a run leaves on disk and every entry point reads back: orbax checkpoints (`checkpointing`, with
`checkpoint_integrity` naming a damaged file), the metrics log (`metrics_writer`) and the reading of a run's
parameters and config for eval and sampling (`run_reader`). Below training, evaluation and inference, so
each of them may import it."""
