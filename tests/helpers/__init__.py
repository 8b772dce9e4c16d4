"""What the tests share: generated models (tiny_models, tiny_specs, arch_models), llama.cpp contexts for
read-backs (llama_contexts), calibration models (calibration_models), a served process (serve_process),
the fuzzing and soak harnesses (also run at scale by benchmarks/fuzz.py and benchmarks/soak.py), and
waiting (waiting). Test modules import from here, never from each other or from benchmarks/."""
