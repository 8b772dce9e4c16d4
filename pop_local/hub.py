"""Model references: a local GGUF path, or a GGUF file on the Hugging Face hub.

A hub reference is `org/repo/file.gguf` (or `org/repo:file.gguf`). It is fetched with huggingface_hub,
which keeps its own cache and honours HF_HUB_OFFLINE=1 (then only cached files resolve).
"""

from __future__ import annotations

import os
from typing import Tuple

from .errors import PopModelNotFound

__all__ = ["resolve_model", "parse_hub_ref"]


def parse_hub_ref(ref: str) -> Tuple[str, str]:
    """("org/repo", "file.gguf") for a hub reference; ValueError if it is not one."""
    if os.path.isabs(ref) or ref.startswith((".", "~")) or "\\" in ref:
        raise ValueError(ref)  # a file-system path, never a hub reference
    if ":" in ref and "://" not in ref:
        repo, _, filename = ref.partition(":")
    else:
        parts = ref.split("/")
        if len(parts) < 3:
            raise ValueError(ref)
        repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    if repo.count("/") != 1 or not filename.endswith(".gguf"):
        raise ValueError(ref)
    return repo, filename


def resolve_model(ref: "str | os.PathLike[str]") -> str:
    """A local path to the GGUF `ref` names (downloading a hub file into the hub cache if needed)."""
    ref = os.fspath(ref)
    if os.path.exists(ref):
        return ref
    try:
        repo, filename = parse_hub_ref(ref)
    except ValueError:
        raise PopModelNotFound(f"{ref}: no such file (a hub reference looks like org/repo/file.gguf)") from None
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise PopModelNotFound(f"{ref}: not a local file, and huggingface_hub is not installed") from None
    try:
        return hf_hub_download(repo_id=repo, filename=filename)
    except Exception as e:  # offline cache miss, missing repo/file, network errors: one clear message
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        hint = " (HF_HUB_OFFLINE is set and the file is not in the local cache)" if offline else ""
        raise PopModelNotFound(f"{ref}: no such file, and cannot get {filename} from the hub repository "
                               f"{repo}{hint}: {type(e).__name__}") from None
