"""InferenceKey worker agent: inventory, engines and the runtimes that launch them on a GPU host."""

__version__ = "0.1.0"
