"""pop_local.converter: calibration (virtual gates), skip-set choice and the POP GGUF writer.

    from pop_local.converter import convert
    convert("model.gguf", "model.pop.gguf")            # calibrate, skip the last third
    convert("model.gguf", "model.pop.gguf", layers="20-29", calibrate=False)

torch and transformers are imported only when calibration runs.
"""

from .convert import ConvertResult, choose_skip_layers, convert
from .writer import write_pop_gguf

__all__ = ["convert", "ConvertResult", "choose_skip_layers", "write_pop_gguf"]
