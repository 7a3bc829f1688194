"""Layer 0: helpers every other layer may use (no imports from the rest of the package): the global Flax
options, path -> key strings, flat params <-> NNX modules, the converted-params format, config loading."""
