"""Running a model with POP: PopLlama, the native patch's bindings, every touch of llama-cpp-python's
internals (upstream.py), the load and POP settings, model files, devices and RPC."""
