"""The one batch-key vocabulary: the names `data/examples.py` emits, `training/stage*.py` batches and
`diffusion/stages.py` reads (no key is renamed on the way).

Token fields are int32 `[L]` per example (`[B, L]` batched); visuals are uint8 images or fp32 latents named by
`visual(kind, role)`. Stage 1 merges two independently shuffled streams of the same examples into one batch,
so its loss reads the text-to-image stream under the `T2I_*` names (the only stage-specific names).
"""
from __future__ import annotations

IMAGE, LATENT = "image", "latent"   # visual kinds: uint8 images [S, S, 3] | model-space latents [h, w, C]
KINDS = (IMAGE, LATENT)

CAPTION_IDS = "caption_ids"                # the item's 4-key caption (JSON) tokens [L]
CAPTION_MASK = "caption_mask"              # its attention mask [L]
CAPTION_LABEL_MASK = "caption_label_mask"  # 1 on the value tokens the caption loss is taken on [L]
RE_CAPTION_IDS = "re_caption_ids"          # stage 1: the free-text t2i prompt [L]
RE_CAPTION_MASK = "re_caption_mask"
PREF_IDS, PREF_MASK = "pref_ids", "pref_mask"                  # stage 2/3: the preference caption [L]
SENTENCE_IDS, SENTENCE_MASK = "sentence_ids", "sentence_mask"  # stage 2/3: the category sentence [L]
IDS = "ids"                                # the example's item id; train.py names them when a loss is non-finite
UID, OID, CID = "uid", "oid", "cid"        # stage 2/3: user, outfit and category ids

TARGET, CONTEXT = "target", "context"      # stage-2 visual roles: the generated item and the 3 others [3, ...]
T2I, I2T = "t2i", "i2t"                    # stage-1 streams (visual roles of the merged batch)
T2I_IDS = "t2i_ids"                        # stage 1: the t2i rows' prompt (their RE_CAPTION_IDS)
T2I_REAL_IDS = "t2i_real_ids"              # stage 1: the t2i rows' structured caption (their CAPTION_IDS)


def visual(kind: str, role: str | None = None) -> str:
    """The key of a visual field: `images`/`latents`, or `<role>_images`/`<role>_latents`."""
    if kind not in KINDS:
        raise ValueError(f"visual kind must be one of {KINDS}, got {kind!r}")
    return f"{role}_{kind}s" if role else f"{kind}s"
