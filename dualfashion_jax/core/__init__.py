"""Layer 0: the global Flax options, path -> key strings, flat params <-> NNX modules, the converted-params format."""
