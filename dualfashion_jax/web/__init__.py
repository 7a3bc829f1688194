"""The web page of issue #18 (`dualfashion-jax serve`): a FastAPI client of `sessions.engine.SessionEngine`."""
