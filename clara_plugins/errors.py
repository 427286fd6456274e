"""The error hierarchy of clara-plugins: every error the library raises on purpose is a ``ClaraError``."""

from __future__ import annotations


class ClaraError(Exception):
    """Base class of every error raised on purpose by clara-plugins."""


class CheckpointError(ClaraError):
    """A checkpoint folder or file is missing, malformed, or does not fit the model it is loaded into."""


class ConfigError(ClaraError, ValueError):
    """A configuration field has a value that cannot work; the message names the field and the value."""


class InputError(ClaraError, ValueError):
    """User input (texts, questions, ids, metadata) is of the wrong type or value; the message says which."""


class StoreError(ClaraError):
    """The compressed-vector store is missing, damaged, or cannot do what was asked."""


class ModelMismatchError(StoreError):
    """A store was built by a different model than the one used to read or extend it."""


class MissingExtraError(ClaraError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        msg = f"{package} is not installed; install it with: pip install 'clara-plugins[{extra}]'"
        super().__init__(msg)
        self.package = package
        self.extra = extra
