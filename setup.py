"""dualfashion_jax: a JAX/Flax NNX port of DualFashion (personalized generative fashion recommendation).

Lower bounds only; exact, tested pins live in constraints.txt (used by CI and the README commands).
"""
from setuptools import find_packages, setup

setup(
    name="dualfashion_jax",
    version="0.1.0",
    description="DualFashion (dual image+caption diffusion for fashion recommendation) in JAX/Flax NNX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # configs/ (repo root) ships as dualfashion_jax.configs: `--config stage1.py:demo` and the demo find it installed
    packages=find_packages(include=["dualfashion_jax", "dualfashion_jax.*"]) + ["dualfashion_jax.configs"],
    package_dir={"dualfashion_jax.configs": "configs"},
    include_package_data=True,
    package_data={"dualfashion_jax.web": ["static/*"]},  # the page's HTML / JS / CSS
    install_requires=[
        "jax>=0.10.2",
        "jaxlib>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "ml_collections>=1.1.0",
        "numpy>=2.0",
        "tensorflow-datasets>=4.9.10",
        "array_record>=0.8.6",
        "grain>=0.2.18",
        "importlib_resources>=6.0",  # TFDS imports it lazily without declaring it
        "transformers>=5.0",  # tokenizers only on the JAX side
        "tokenizers>=0.20",
        "sentencepiece>=0.2",
        "safetensors>=0.4",
        "pillow>=10.0",
        "scipy>=1.11",
        "tqdm>=4.60",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "fastapi>=0.115",  # `dualfashion-jax serve`: the session web page
        "uvicorn>=0.30",
    ],
    extras_require={
        # httpx: FastAPI's TestClient; selenium drives Debian's chromium + chromium-driver in the browser test
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "httpx>=0.27", "selenium>=4.20"],
        # PyTorch reference side: conversion and parity. torch is pinned exactly: any other
        # version pulls a multi-GB CUDA build on CPU-only machines.
        "convert": ["torch==2.13.0", "diffusers>=0.40", "transformers>=5.0"],
        "tpu": ["jax[tpu]>=0.10.2"],
        "cuda": ["jax[cuda12]>=0.10.2"],
    },
    entry_points={"console_scripts": ["dualfashion-jax=dualfashion_jax.cli:main"]},
)
