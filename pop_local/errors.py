"""Typed errors of pop-local. The library raises these; only the CLI turns them into one-line messages."""

__all__ = ["PopError", "PopNativeError", "PopSettingError", "PopMetadataError", "PopModelNotFound"]


class PopError(Exception):
    """Base class of every error pop-local raises on purpose."""


class PopNativeError(PopError):
    """The loaded libllama lacks the POP symbols (an unpatched llama-cpp-python build)."""


class PopSettingError(PopError, ValueError):
    """A setting holds an invalid value: `field` names it as the library spells it (a settings field such
    as "skip_layers", a GGUF key, a keyword argument), `reason` says what is wrong. Front ends word the
    field their own way (the CLI as its option, apps/cli.py)."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


class PopMetadataError(PopSettingError):
    """A pop.* key (in the file or in kv_overrides) holds an invalid value, or the file is not a model GGUF."""


class PopModelNotFound(PopError, FileNotFoundError):
    """A model file or a model package is missing."""
