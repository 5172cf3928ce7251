"""What every room shares: the package's errors, atomic files and the output rule, checkpoint files, and the
commands' entry point. It imports nothing else of the package."""
