"""Local language models: catalog, llama.cpp runtime, sink cache, fakes."""
