"""The embedded default model (SmolLM2-135M-Instruct from a PyPI package) made POP-ready on first use."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import tempfile
from typing import Callable, Iterator, Optional

from pop_local.format.metadata import PopMetadata
from pop_local.runtime.models import SMOLLM2_DIST, SMOLLM2_FILE, cache_dir, resolve_model_ref, smollm2_path

__all__ = ["default_model", "default_model_path", "model_meta", "DEFAULT_CALIBRATION_SAMPLES", "DEFAULT_WEIGHT_TYPE"]

# The default model is converted with the converter's own default budget and its answer check, restricted
# to the layers' own K/V and at most a third of the layers (own K/V skip the fits and the fitted copies the
# check would load). Retention first: the paper's set, chosen here by KL before, loses the needle in
# varied prose (pop_needle, n=50: -8 points at 1k, -18 at 2k; suite-smollm2-q8_0.json), and on this 135M
# model the check keeps the last layer alone (two layers lose answers), which runs at about the full
# model's speed. The paper's set stays an option at its measured cost (`--skip-layers 20-29`;
# docs/converter.md#the-embedded-default-model).
# 16 samples keep the calibration near two minutes on two cores; the check adds a few more.
DEFAULT_CALIBRATION_SAMPLES = 16
DEFAULT_BUDGET = {"max_kl": "paper", "kv": "own", "max_ratio": 1 / 3, "answer_check": True}
# The package ships Q4_1, the slowest of the types measured: Q8_0 (llama.cpp's quantizer, from the Q4_1
# weights) prefills 1.5-1.7x faster with the same answers to the check's 24 questions
# (benchmarks/results/weight-types-smollm2.json) and the suite's needles at 1k and 2k
# (suite-smollm2-q8_0.json); it is made from the package's file on first start.
DEFAULT_WEIGHT_TYPE = "q8_0"
# part of the cached file's name: a new recipe (how the converter measures or chooses) makes a new file
DEFAULT_RECIPE = f"checked-stable-own-third-{DEFAULT_WEIGHT_TYPE}"
# without torch (a plain `pip install pop-local`): the paper's last third, written without calibration
UNCALIBRATED_RECIPE = f"paper-uncalibrated-{DEFAULT_WEIGHT_TYPE}"


def default_model_path(progress: Optional[Callable[[str, int, int], None]] = None) -> str:
    """The path of the embedded default model (see default_model)."""
    return default_model(progress).path


def default_model(progress: Optional[Callable[[str, int, int], None]] = None):
    """The embedded default model's PopMetadata (its `path` is the file), POP-ready: SmolLM2-135M-Instruct
    converted once and cached.

    The first call calibrates and writes <cache>/models/...pop.gguf (temp file + rename, so an
    interrupted first start leaves nothing half-written); later calls return the cached file.
    Without torch/transformers the paper's last third is written without calibration (a note says
    so); the calibrated file is made once they are installed.
    """
    from pop_local.format.metadata import read_pop_metadata

    source = smollm2_path()
    try:
        version = importlib.metadata.version(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - found by find_spec above
        version = "unknown"

    def cached(recipe: str) -> str:
        return os.path.join(cache_dir(), "models", f"{SMOLLM2_FILE[:-len('.gguf')]}-{version}-{recipe}.pop.gguf")

    target = cached(DEFAULT_RECIPE)
    if os.path.isfile(target):
        try:
            meta = read_pop_metadata(target)
            if meta.frontier is not None and _complete(target):  # made the current way (with a budget)
                return meta
        except Exception:  # an unreadable or incomplete cache entry is rebuilt below
            pass
    os.makedirs(os.path.dirname(target), exist_ok=True)
    from pop_local.errors import PopError

    from .convert import check_calibration_installed, convert

    try:
        check_calibration_installed()
    except PopError:
        from pop_local.format.frontier import paper_skip_set
        from pop_local.format.layers import format_layers

        fallback = cached(UNCALIBRATED_RECIPE)
        skip = format_layers(paper_skip_set(read_pop_metadata(source).n_layer))
        if progress:
            progress(f"torch is not installed: the default model skips the paper's last third (layers {skip}) "
                     "without calibration; pip install 'pop-local[convert]' for the calibrated default", 0, 0)
        if not (os.path.isfile(fallback) and _complete(fallback)):
            with _in_weight_type(source, os.path.dirname(target)) as weights:
                convert(weights, fallback, layers=skip, calibrate=False, force=True)
        return read_pop_metadata(fallback)
    if progress:
        progress(f"first start: making the default model POP-ready (cached in {os.path.dirname(target)})", 0, 0)
    with _in_weight_type(source, os.path.dirname(target)) as weights:
        convert(weights, target, samples=DEFAULT_CALIBRATION_SAMPLES, force=True, progress=progress, **DEFAULT_BUDGET)
    return read_pop_metadata(target)


def _complete(path: str) -> bool:
    """Whether the file holds every byte its tensor table names: a cache entry cut short (a crash, a full disk)
    is made again instead of failing at every load."""
    from pop_local.format.gguf_file import read_gguf

    try:
        read_gguf(path)
        return True
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _in_weight_type(source: str, folder: str) -> Iterator[str]:
    """The packaged model in DEFAULT_WEIGHT_TYPE, in a temporary folder beside the cache (removed after)."""
    from .quantize import requantize

    name = SMOLLM2_FILE.replace(".Q4_1.", f".{DEFAULT_WEIGHT_TYPE.upper()}.")
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        yield requantize(source, os.path.join(tmp, name), DEFAULT_WEIGHT_TYPE)


def model_meta(ref: Optional[str], progress: Optional[Callable[[str, int, int], None]] = None) -> PopMetadata:
    """The metadata of the GGUF `ref` names, or (None) of the embedded default model: what a command
    reads at start-up, once, and passes on (open_model(meta=...))."""
    from pop_local.format.metadata import read_pop_metadata

    return default_model(progress) if ref is None else read_pop_metadata(resolve_model_ref(ref))
