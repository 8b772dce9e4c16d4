"""pop_local.converter: calibration (virtual gates) and the POP GGUF writer.

Not built yet: see issue 3 ("Converter: stage-aware layer importance"). Installed as
pop_local.converter through setup.py's package_dir.
"""

__all__: list = []
