"""The training engine: settings, run folder, epoch loop and its pieces, test protocol, run outputs."""
