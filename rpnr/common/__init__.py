"""What every room shares (errors, files, checkpoint files, the entry point); imports nothing else."""
