"""Typed errors of pop-local. The library raises these; only the CLI turns them into one-line messages."""

__all__ = ["PopError", "PopNativeError", "PopMetadataError", "PopModelNotFound"]


class PopError(Exception):
    """Base class of every error pop-local raises on purpose."""


class PopNativeError(PopError):
    """The loaded libllama lacks the POP symbols (an unpatched llama-cpp-python build)."""


class PopMetadataError(PopError, ValueError):
    """A pop.* key (in the file or in kv_overrides) holds an invalid value."""


class PopModelNotFound(PopError, FileNotFoundError):
    """A model file or a model package is missing."""
