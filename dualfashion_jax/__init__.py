"""dualfashion_jax: DualFashion's dual (image + attribute caption) diffusion recommender in JAX/Flax NNX."""

__version__ = "0.1.0"
