"""Errors raised by the models package.

Every failure that leaves ``models/`` is a :class:`ModelError`; foreign
exceptions (llama.cpp, OS, network) are converted at the boundary.
"""

from __future__ import annotations


class ModelError(Exception):
    """Base class for every error of the models package."""


class ModelFileError(ModelError):
    """A model file is missing, truncated, not GGUF or otherwise unreadable."""


class ChecksumError(ModelFileError):
    """A model file's sha256 does not match the expected digest."""


class ContextTooSmallError(ModelError):
    """The requested ``n_ctx`` cannot hold the sinks plus a usable window."""


class ModelLoadError(ModelError):
    """llama.cpp refused to load a model that passed our own checks."""


class DownloadError(ModelError):
    """Downloading a model failed (network, not found, checksum)."""


class ModelProcessError(ModelError):
    """The process that owns the model crashed, hung or spoke nonsense."""


class GenerationError(ModelError):
    """Generation failed after the model was loaded."""


class DownloadCancelledError(DownloadError):
    """A download was cancelled; its partial file is kept so it can resume."""


class DownloadChecksumError(DownloadError, ChecksumError):
    """A downloaded file's sha256 does not match; the download was deleted."""


class CatalogError(ModelError):
    """The curated catalog is invalid, or names no such model."""


class PinMismatchError(DownloadChecksumError):
    """A download differs from the digest pinned on its first download."""
