"""Error types that the tool reports to users as one line.

Everything a user can cause (a bad path, a corrupt model, an op we cannot rebuild, an empty data folder)
raises a subclass of :class:`QdropError`. The CLI prints ``str(error)`` on one line and exits 1. Anything
else (out of memory, a failed write, a bug in the tool) is one line and exit 1 there too; for a bug the
traceback goes to a file the line names, so nothing is lost.
"""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class QdropError(Exception):
    """Base class of every error meant for the user (one line, no traceback)."""


class ModelLoadError(QdropError):
    """The model file is missing, unreadable, not ONNX, or fails onnx.checker."""


class UnsupportedModelError(QdropError):
    """The model uses ops (or op attributes) that the PyTorch rebuild does not support.

    ``ops`` maps each unsupported op type (or ``Op(detail)``) to how many nodes use it.
    """

    def __init__(self, message: str, ops: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.ops = dict(ops or {})


class DataError(QdropError):
    """Calibration or evaluation data is missing, empty or does not fit the model."""


class OutputError(QdropError):
    """An output file (model, report, checkpoint) could not be written: disk full, file too large, no folder."""
