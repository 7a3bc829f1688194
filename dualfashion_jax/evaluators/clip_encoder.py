"""`ClipEncoder`: the batched + jitted CLIP embedding front end shared by the CLIP, text, compatibility and grounding
metrics (built once per run by `EvalContext.clip`)."""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from flax import nnx

from dualfashion_jax.evaluators import batched
from dualfashion_jax.evaluators.nets import clip_vit


class ClipEncoder:
    """Jitted, fixed-batch CLIP embedding of images (uint8 NHWC, any size) and texts (cached per string)."""

    def __init__(self, model, tokenizer, *, batch_size: int = 32, show_progress: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.show_progress = batch_size, show_progress
        size = model.config.vision.image_size
        graphdef, state = nnx.split(model)
        self._img = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode_image(clip_vit.preprocess(x, size)))
        self._txt = jax.jit(lambda s, ids: nnx.merge(graphdef, s).encode_text(ids))
        self._state = state
        self._text_cache: dict[str, np.ndarray] = {}

    def images(self, images: np.ndarray, desc: str = "CLIP images") -> np.ndarray:
        """uint8 [N, H, W, 3] -> UNnormalised image embeddings [N, E]."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"ClipEncoder.images: expected [N, H, W, 3] RGB images, got {images.shape}")
        return batched.map_batches(lambda x: self._img(self._state, x), images, batch_size=self.batch_size,
                                   desc=desc, show_progress=self.show_progress)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """texts -> UNnormalised text embeddings [N, E] (each distinct string encoded once)."""
        todo = sorted({t for t in texts if t not in self._text_cache})
        if todo:
            ids = self.tokenizer(todo)
            emb = batched.map_batches(lambda x: self._txt(self._state, x), ids, batch_size=self.batch_size,
                                      desc="CLIP texts", show_progress=self.show_progress)
            self._text_cache.update(zip(todo, emb))
        dim = self.model.config.text.output_dim
        return np.stack([self._text_cache[t] for t in texts]) if len(texts) else np.zeros((0, dim), np.float32)
