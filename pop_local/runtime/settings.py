"""The load and POP settings, defined once (pydantic) for every entry point.

`LoadFields` (how a model is loaded) and `PopFields` (how prompts run) are the one spelling of these
options: `pop-local chat/serve/bench/eval` build their command-line options from them (apps/cli.py),
the server hands them to PopLlama as they are (apps/server.py), and the LangChain / LlamaIndex classes
inherit them as their own fields. A value is checked here, once, where it enters, and travels typed
from then on (a skip set as layer numbers, RPC servers as endpoints, shares as numbers); a bad value
is a PopSettingError naming the field, which each front end words in its own terms.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pop_local.errors import PopSettingError
from pop_local.format.keys import DEFAULT_FULL_TAIL, DEFAULT_MIN_TOKENS, MAX_MIN_TOKENS
from pop_local.format.layers import parse_layers

from .rpc import parse_endpoints

__all__ = ["LoadFields", "PopFields", "LoadSettings", "PopSettings", "build", "settings_error",
           "RANDOM_SEED"]

RANDOM_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: a fresh random seed
KvValue = Union[bool, int, float, str]


class LoadFields(BaseModel):
    """How a model is loaded. Two wrappers with equal load settings share one loaded model."""

    n_ctx: int = Field(4096, ge=16, le=1 << 24, description="context size, in tokens")
    n_batch: int = Field(512, ge=1, le=1 << 24, description="prompt tokens per llama.cpp batch")
    n_threads: Optional[int] = Field(None, ge=1, le=1024,
                                     description="CPU threads (default: the physical cores, as llama.cpp's own tools)")
    n_gpu_layers: int = Field(-1, ge=-1, le=100000,
                              description="layers offloaded to the GPU in GPU builds (-1: all; ignored on CPU builds)")
    flash_attn: bool = Field(False, description="flash attention (where the backend has it)")
    chat_format: Optional[str] = Field(
        None, description="llama-cpp-python chat format (default: the model's own template)")
    kv_overrides: Optional[Dict[str, KvValue]] = Field(
        None, description="GGUF keys to override at load, e.g. {\"pop.prefill.skip_layers\": \"20-29\"}")
    seed: int = Field(-1, ge=-1, le=RANDOM_SEED - 1, description="sampling seed (-1: random)")
    reuse_cache_across_settings: bool = Field(
        False, description="reuse a cached prompt prefix computed under other POP settings (faster; by default a "
                           "request reuses only what its own settings computed, so it equals a fresh run)")
    rpc_servers: Optional[Tuple[str, ...]] = Field(
        None, description='split the model over these remote devices too: "HOST:PORT[,HOST:PORT...]", each '
                          'running `pop-local rpc-server`')
    tensor_split: Optional[Tuple[float, ...]] = Field(
        None, description='share of the offloaded layers per device, in `pop-local devices` order, e.g. "1,1,2" '
                          '(default: by free memory)')
    rpc_timeout: int = Field(300, ge=1, le=86400, description="seconds an RPC server may take to answer")
    mmproj: Optional[str] = Field(
        None, description="multimodal projector GGUF (llama.cpp's mmproj file for this model): images in chat messages")
    # not "verbose": LangChain models have a field of that name (their own callback printing)
    llama_log: bool = Field(False, description="show llama.cpp's log")

    @field_validator("rpc_servers", mode="before")
    @classmethod
    def _check_rpc(cls, value: Any) -> Optional[Tuple[str, ...]]:
        """"HOST:PORT,..." or a list of them -> the endpoints, checked, duplicates dropped."""
        return None if value is None else tuple(parse_endpoints(value))

    @field_validator("mmproj")
    @classmethod
    def _check_mmproj(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not os.path.isfile(os.path.expanduser(value)):
            raise ValueError(f"{value}: no such file")
        return None if value is None else os.path.expanduser(value)

    @field_validator("tensor_split", mode="before")
    @classmethod
    def _check_split(cls, value: Any) -> Optional[Tuple[float, ...]]:
        """"1,1,2" or numbers -> one non-negative share per device (at most 16, llama.cpp's limit)."""
        if value is None:
            return None
        text = value if isinstance(value, str) else ",".join(str(v) for v in value)
        try:
            shares = tuple(float(x) for x in text.split(","))
        except ValueError:
            raise ValueError(f"{text!r}: expected comma-separated numbers, e.g. 1,1,2") from None
        if (not shares or len(shares) > 16 or any(not v >= 0 or v == float("inf") for v in shares)
                or not sum(shares) > 0):
            raise ValueError(f"{text!r}: expected 1 to 16 shares, none negative, not all zero")
        return shares

    @field_validator("kv_overrides")
    @classmethod
    def _check_overrides(cls, value: Optional[Dict[str, KvValue]]) -> Optional[Dict[str, KvValue]]:
        for key, v in (value or {}).items():
            if not key or any(c in key for c in "=: ") or len(key) > 127:
                raise ValueError(f"{key!r} is not a GGUF key name")
            if isinstance(v, str) and any(c in v for c in "=:"):
                # llama.cpp's key=type:value spelling (and upstream's server parser) cannot carry these
                raise ValueError(f"{key}: a string value cannot contain '=' or ':'")
            if isinstance(v, str) and len(v) > 127:
                raise ValueError(f"{key}: string values are limited to 127 bytes by llama.cpp")
        return value

    def load_settings(self) -> "LoadSettings":
        """These fields, checked when they were set, as a LoadSettings (from a wrapper class that inherits them)."""
        return LoadSettings.model_construct(**{name: getattr(self, name) for name in LoadFields.model_fields})


class PopFields(BaseModel):
    """How prompts run; may change per request without reloading. None follows the file."""

    pop: Optional[bool] = Field(None, description="POP on/off (None: as the file says)")
    skip_layers: Optional[Tuple[int, ...]] = Field(
        None, description='prefill skip set instead of the file\'s, e.g. "20-29"')
    kv_mode: Optional[str] = Field(
        None, description='K/V of pruned layers: "fitted" (where the file has them) or "own"')
    min_tokens: Optional[int] = Field(
        None, ge=0, le=MAX_MIN_TOKENS,
        description=f"prompts with fewer new tokens than this run the full model (default: the file's "
                    f"pop.prefill.min_tokens, else {DEFAULT_MIN_TOKENS}; 0: prune every prompt)")
    full_tail: Optional[int] = Field(
        None, ge=0, le=MAX_MIN_TOKENS,
        description=f"the last N tokens of a pruned prompt run the full model, e.g. the question after a "
                    f"long document (default: the file's pop.prefill.full_tail, else {DEFAULT_FULL_TAIL}: "
                    f"only the last token)")

    @field_validator("skip_layers", mode="before")
    @classmethod
    def _check_skip(cls, value: Any) -> Optional[Tuple[int, ...]]:
        """"20-29" (or layer numbers) -> ascending layer numbers: the one place a skip set is parsed.
        The range is checked once the model's layers are known (PopLlama)."""
        return None if value is None else parse_layers(value, key="skip_layers")

    @field_validator("kv_mode")
    @classmethod
    def _check_kv_mode(cls, value: Optional[str]) -> Optional[str]:
        if value not in (None, "fitted", "own"):
            raise ValueError(f'expected "fitted" or "own", got {value!r}')
        return value

    def pop_settings(self) -> "PopSettings":
        """These fields, checked when they were set, as a PopSettings."""
        return PopSettings.model_construct(**{name: getattr(self, name) for name in PopFields.model_fields})


class LoadSettings(LoadFields):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def key(self) -> Tuple[Any, ...]:
        """Hashable identity of the loaded model (kv_overrides is a dict). The seed is left out: the
        integrations seed each request, so wrappers differing only in seed share one model."""
        return tuple((name, json.dumps(getattr(self, name), sort_keys=True))
                     for name in LoadFields.model_fields if name != "seed")

    def llama_params(self) -> Dict[str, Any]:
        """These settings as llama_cpp.Llama's own keyword arguments (PopLlama reads rpc_servers,
        rpc_timeout and reuse_cache_across_settings from the settings themselves)."""
        return {"n_ctx": self.n_ctx, "n_batch": self.n_batch, "n_threads": self.n_threads,
                "n_threads_batch": self.n_threads, "n_gpu_layers": self.n_gpu_layers, "flash_attn": self.flash_attn,
                "chat_format": self.chat_format, "kv_overrides": dict(self.kv_overrides) if self.kv_overrides else None,
                "tensor_split": list(self.tensor_split) if self.tensor_split else None,
                "seed": RANDOM_SEED if self.seed < 0 else self.seed, "verbose": self.llama_log}


class PopSettings(PopFields):
    model_config = ConfigDict(extra="forbid", frozen=True)


def settings_error(error: ValidationError, names: Optional[Mapping[str, str]] = None) -> PopSettingError:
    """One line naming the first bad setting (as `names` spells the field, else by the field's name);
    the error keeps its class when a validator raised one of ours (a bad skip set: PopMetadataError)."""
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "settings"
    label = (names or {}).get(str(first["loc"][0]) if first["loc"] else "", field)
    original = (first.get("ctx") or {}).get("error")
    if isinstance(original, PopSettingError):
        cls, message = type(original), original.reason
    else:
        cls, message = PopSettingError, first["msg"].removeprefix("Value error, ")
    more = len(error.errors()) - 1
    return cls(label, message + (f" (and {more} more)" if more else ""))


def build(cls, values: Mapping[str, Any], names: Optional[Mapping[str, str]] = None):
    """cls(**values), with a PopSettingError (settings_error) instead of pydantic's multi-line report."""
    try:
        return cls(**values)
    except ValidationError as e:
        raise settings_error(e, names) from None
