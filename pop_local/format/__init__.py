"""What a POP GGUF holds and how it is read: pop.* keys, skip sets, metadata, the stored quality frontier,
the architecture table. Standard library, numpy and gguf only: no llama_cpp, no torch."""
