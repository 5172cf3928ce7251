"""The training engine: the settings, the run folder (lock, run.json, checkpoints, resume rules), the epoch loop and
its pieces (the epoch's labels and memories, batches, one iteration, the process group), the test protocol and the
tests of a run, rank lists, and the run's log, metrics and curves."""
