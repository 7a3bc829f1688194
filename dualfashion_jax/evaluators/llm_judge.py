"""Optional LLM text-compatibility judge (DualFashion's Gemini rubric, spec §6 item 8): 1-10 per attribute.

Runs ONLY when the caller passes `enabled=True` (the CLI's `--llm-judge`) AND the API key is in the environment
variable `GEMINI_API_KEY` (never a command-line argument, never stored in reports). It scores every outfit (the
original stopped after 2 because of a leftover debug break). Needs the `google-genai` client package; network
access to the API is the user's responsibility. Not comparable across judge models; the model name is recorded.
Also the `llm_judge` runner and its registration.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Sequence

import numpy as np
from PIL import Image

from dualfashion_jax.evaluators.context import EvalContext
from dualfashion_jax.evaluators.registry import register
from dualfashion_jax.text.tokenizer import CAPTION_KEYS, parse_caption

API_KEY_ENV = "GEMINI_API_KEY"
MODEL_ENV = "GEMINI_TEXT_COMP_MODEL"
DEFAULT_MODEL = "gemini-2.5-flash"

RUBRIC = (
    "You are a professional fashion stylist. The images show the items of an incomplete outfit. A recommender "
    "proposed the missing {category} with the attributes below. For EACH attribute, rate from 1 (clashes with the "
    "outfit) to 10 (perfectly complements it) how well that attribute value fits the outfit shown.\n"
    "Attributes:\n{attributes}\n"
    "Answer with one JSON object mapping each attribute name to an integer score, and nothing else.")


class LLMJudgeError(RuntimeError):
    """The judge was not enabled, has no API key, or its client package is missing."""


def check_enabled(enabled: bool) -> str:
    """Returns the API key, or raises LLMJudgeError saying exactly what is missing."""
    if not enabled:
        raise LLMJudgeError("the LLM judge runs only with an explicit --llm-judge flag (it calls a paid external API)")
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise LLMJudgeError(f"--llm-judge needs the API key in the environment variable {API_KEY_ENV}")
    return key


def _client(key: str):
    try:  # optional client package, imported only when the judge really runs
        from google import genai
    except ImportError as e:
        raise LLMJudgeError("--llm-judge needs the Gemini client: pip install google-genai==3.3.0") from e
    return genai.Client(api_key=key)


def parse_scores(text: str) -> dict[str, int]:
    """Reads {"Color": 7, ...} from a model answer (tolerates code fences / prose); keeps scores in 1..10."""
    m = re.search(r"\{.*\}", text or "", re.S)
    if not m:
        return {}
    try:
        obj = json.loads(m.group(0))
    except json.JSONDecodeError:
        return {}
    out = {}
    for k in CAPTION_KEYS:
        v = obj.get(k) if isinstance(obj, dict) else None
        if isinstance(v, (int, float)) and 1 <= v <= 10:
            out[k] = int(round(v))
    return out


def judge(items: Sequence[dict[str, Any]], *, enabled: bool, model: str | None = None) -> dict[str, float]:
    """items: [{"category": name, "caption": text, "context_images": [uint8 HxWx3, ...]}] -> mean score per key.

    Raises LLMJudgeError unless enabled and keyed. Answers that cannot be parsed are counted, not guessed.
    """
    key = check_enabled(enabled)
    client = _client(key)
    model = model or os.environ.get(MODEL_ENV, DEFAULT_MODEL)
    scores: dict[str, list[int]] = {k: [] for k in CAPTION_KEYS}
    failed = 0
    for it in items:
        attrs = parse_caption(it["caption"] or "")
        if not attrs:
            failed += 1
            continue
        prompt = RUBRIC.format(category=it["category"], attributes="\n".join(f"- {k}: {v}" for k, v in attrs.items()))
        images = [Image.fromarray(np.asarray(a, np.uint8)) for a in it["context_images"]]
        answer = client.models.generate_content(model=model, contents=[prompt, *images])
        got = parse_scores(getattr(answer, "text", "") or "")
        if not got:
            failed += 1
        for k, v in got.items():
            scores[k].append(v)
    out = {f"llm_judge_{k.lower().replace(' ', '_')}": float(np.mean(v)) for k, v in scores.items() if v}
    flat = [v for vs in scores.values() for v in vs]
    out.update({"llm_judge": float(np.mean(flat)) if flat else float("nan"), "llm_judge_failed": failed,
                "llm_judge_n": len(items)})
    return out


# ------------------------------------------------------------------------------------------------ runner
@register("llm_judge", group="Text", headline=[("llm_judge", "LLM judge")],
          description="Gemini 1-10 rubric per attribute vs the incomplete outfit (only with --llm-judge and "
                      "GEMINI_API_KEY)")
def run_llm_judge(ctx: EvalContext) -> dict:
    check_enabled(ctx.opt.llm_judge)  # refuse before loading any image
    names, items = ctx.category_names(), []
    for (ri, g), cap in zip(ctx.entries, ctx.captions):
        r = ctx.records[ri]
        size = ctx.gen_images().shape[1]
        ctxt = [ctx.item_image(r.outfit[s], size) for s in range(4) if s not in r.blank_slots]
        items.append({"category": names[r.categories[g.slot]], "caption": cap, "context_images": ctxt})
    return judge(items, enabled=ctx.opt.llm_judge)
