"""The package's errors: a command prints the one-line message and exits with status 1 (DESIGN.md section 14)."""


class RPNRError(Exception):
    """An expected error with a one-line message."""


class UsageError(RPNRError, ValueError):
    """A setting, argument or value that cannot work."""


class MissingFileError(UsageError, FileNotFoundError):
    """A file the command needs is not there (e.g. ImageNet weights)."""


class TrainingError(RPNRError, RuntimeError):
    """A run cannot go on (degenerate pseudo labels, divergence, an unusable checkpoint)."""


class PseudoLabelError(TrainingError):
    """An epoch's pseudo labels cannot fill a batch (too few clusters)."""


class CheckpointError(RPNRError, RuntimeError):
    """A checkpoint is missing, unreadable, unsafe, of the wrong layout or of another dataset."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint file is empty, truncated, corrupted or not a PyTorch file."""


class UnsafeCheckpointError(CheckpointError):
    """A complete PyTorch file whose pickle references code outside the allow-list (refused unrun)."""


class RawDataError(RPNRError):
    """A raw dataset or image is missing, incomplete or unreadable."""


class PreparedDataError(RPNRError):
    """A prepared folder is missing, incomplete, of the other dataset or of another size."""


class DamagedManifestError(PreparedDataError):
    """A prepared folder's manifest.json is not one this project could have written."""


class DistributedError(RPNRError, RuntimeError):
    """A launch that cannot work (process count, devices)."""


class RunFolderError(RPNRError, RuntimeError):
    """A logs folder cannot be used as asked (in use, or holding an earlier run)."""


class ReportError(RPNRError, RuntimeError):
    """Nothing to report (a missing path, no run folder)."""
