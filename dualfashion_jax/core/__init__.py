"""Layer 0: helpers every other layer may use (no imports from the rest of the package)."""
