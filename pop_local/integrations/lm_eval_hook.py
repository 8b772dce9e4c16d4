"""Startup hook: the stock `lm_eval` command finds `--model pop-local` without importing anything.

lm-evaluation-harness 0.4.13 discovers no external models (no entry points): its registry knows the
models its own package lists and whatever is registered before the lookup. install.sh copies
pop_local_lm_eval.pth into the virtual environment's site-packages; Python runs its one line at
startup, which imports this module. It imports nothing heavy (no lm_eval, llama_cpp or torch): it adds
a finder to sys.meta_path that, right after `lm_eval.api.registry` has been executed (whoever imports
it), registers "pop-local" by the lazy target "pop_local.integrations.lm_eval:PopLocalLM" (only if the
name is still free). The adapter itself is imported only when lm_eval looks the model up.

lm_eval fills an empty registry with its own models on the first lookup (get_model); a registry that
already holds "pop-local" is not empty, so lm_eval's own model list (lm_eval.models: names and lazy
targets, no model code) is imported first, and every built-in model stays available.

Nothing here may stop Python: every step is guarded, and a failure leaves lm_eval as it is.
"""

import sys

__all__ = ["MODEL_NAME", "TARGET", "install", "register"]

MODEL_NAME = "pop-local"
TARGET = "pop_local.integrations.lm_eval:PopLocalLM"
_REGISTRY = "lm_eval.api.registry"


def register(registry_module) -> None:
    """Register "pop-local" lazily in lm_eval's model registry (the module lm_eval.api.registry)."""
    registry = registry_module.model_registry
    if len(registry) == 0:
        # get_model imports lm_eval's own list only into an empty registry: import it now
        import importlib

        importlib.import_module("lm_eval.models")
    if MODEL_NAME not in registry:
        registry.register(MODEL_NAME, target=TARGET)


def _after_import(module) -> None:
    try:
        register(module)
    except Exception:  # never break lm_eval: without the hook, `import pop_local.integrations.lm_eval` registers
        pass


class _RegisteringLoader:
    """The module's own loader, and the registration once the module has run."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _after_import(module)

    def __getattr__(self, name):  # get_source, get_resource_reader, ...: the wrapped loader's
        return getattr(self._loader, name)


class _RegistryFinder:
    """A sys.meta_path finder for lm_eval.api.registry only: the other finders' spec, loader wrapped."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _REGISTRY:
            return None
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
            if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _RegisteringLoader(spec.loader)
            return spec
        except Exception:
            return None  # the normal import machinery takes over

    def invalidate_caches(self):
        pass


def install() -> None:
    """Add the finder (once); when lm_eval.api.registry is already imported, register now."""
    if not any(isinstance(f, _RegistryFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegistryFinder())
    module = sys.modules.get(_REGISTRY)
    if module is not None and hasattr(module, "model_registry"):
        _after_import(module)


try:
    install()
except Exception:  # pragma: no cover - never fail Python's startup
    pass
