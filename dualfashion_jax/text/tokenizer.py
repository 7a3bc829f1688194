"""T5 caption tokenizer: structured attribute captions -> token ids, attention mask and label mask (spec §1.3, §3).

Wraps a transformers T5 tokenizer loaded from a local directory (pad = EOS `</s>`, every segment padded or
truncated to `max_length` with EOS appended). The label mask marks the tokens that spell the VALUES of the four
target attributes; the masked text diffusion loss only scores those tokens. Also holds the canonical caption
formatter, the evaluators' lenient caption parser, and a small on-the-fly sentencepiece tokenizer for tests and
the demo (no real T5 vocabulary can be downloaded here). Every encode call counts the texts it truncated.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

CAPTION_KEYS = ("Color", "Material", "Design features", "Clothing Fashion Style")
MASK_TOKEN = "<extra_id_0>"
UNKNOWN = "Unknown"
MIN_BASE_VOCAB = 16  # the transformers "silent stub" has 4 base pieces + 100 extra ids
SKELETON_VALUE = "x"  # the one-letter value of the scaffold-only caption (`check_scaffold`, caption templates)

# `"<Key>"\s*:\s*"(value)"` per target key; the value group allows escaped quotes.
_VALUE_RES = {k: re.compile(r'"' + re.escape(k) + r'"\s*:\s*"((?:[^"\\]|\\.)*)"') for k in CAPTION_KEYS}


# Whitespace right after a JSON value's opening quote (a tokenizer whose caption scaffold pieces end in the
# quote decodes the next word with its word-marker space); no caption value starts with a space.
_VALUE_START_SPACE = re.compile(r'(":\s*")\s+')


class CaptionError(ValueError):
    """A caption string is not the expected JSON object; the message quotes the caption's start."""


class TokenizerError(ValueError):
    """A tokenizer directory is missing, a stub, lacks the mask token, or cannot fit the caption scaffold."""


class TruncationWarning(UserWarning):
    """Texts longer than the tokenizer's max_length were cut; the message gives the count and the first one."""


@dataclasses.dataclass
class Truncation:
    """How many of `total` texts were longer than max_length tokens (EOS included); `first` is the first such."""
    count: int = 0
    total: int = 0
    first: str | None = None

    def add(self, texts: Sequence[str], truncated: Sequence[bool]) -> "Truncation":
        for t, cut in zip(texts, truncated):
            if cut and self.first is None:
                self.first = t
        self.count += int(sum(bool(c) for c in truncated))
        self.total += len(texts)
        return self

    def message(self, what: str, tokenizer: "CaptionTokenizer") -> str:
        return (f"{what}: {self.count} of {self.total} texts are longer than max_length={tokenizer.max_length} "
                f"tokens of the tokenizer {tokenizer.source} and were truncated; first: {_quote(self.first or '')}")


def _quote(text: str, n: int = 80) -> str:
    return repr(text[:n] + ("..." if len(text) > n else ""))


# --------------------------------------------------------------------------------------- caption text helpers
def caption_json(attrs: Mapping[str, Any]) -> str:
    """Canonical caption string: the 4 target keys in fixed order, `json.dumps(d, ensure_ascii=False)`.

    The original's `_safe_json_dumps` is unknown (spec §7.3); we use Python's default separators
    (", " and ": ") and keep non-ASCII characters as-is. Missing or empty values become "Unknown" (spec §3).
    """
    out = {}
    for k in CAPTION_KEYS:
        v = attrs.get(k)
        out[k] = str(v).strip() if v is not None and str(v).strip() else UNKNOWN
    return json.dumps(out, ensure_ascii=False)


def parse_caption(text: str) -> dict[str, str]:
    """Lenient parse of a (generated) caption, as the evaluators do; returns only the 4 keys with non-empty values.

    Steps: a well-formed JSON object is read as it is (so apostrophes inside values survive); otherwise strip;
    add missing braces; single -> double quotes; drop trailing commas; `json.loads`; if that fails, fall back to
    the per-key regex. Never raises on garbage: it returns what it can read (possibly `{}`).
    """
    try:
        obj = json.loads(text)
        if isinstance(obj, dict):
            return {k: obj[k].strip() for k in CAPTION_KEYS if isinstance(obj.get(k), str) and obj[k].strip()}
    except (json.JSONDecodeError, TypeError):
        pass
    s = str(text).strip()
    if not s.startswith("{"):
        s = "{" + s
    if not s.endswith("}"):
        s = s + "}"
    s = s.replace("'", '"')
    s = re.sub(r",\s*([}\]])", r"\1", s)
    found: dict[str, Any] = {}
    try:
        obj = json.loads(s)
        if isinstance(obj, dict):
            found = obj
    except json.JSONDecodeError:
        for k, rx in _VALUE_RES.items():
            m = rx.search(s)
            if m:
                found[k] = m.group(1)
    return {k: found[k].strip() for k in CAPTION_KEYS if isinstance(found.get(k), str) and found[k].strip()}


def value_spans(caption: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of the 4 target keys' values in the raw caption string (all occurrences)."""
    spans = []
    for rx in _VALUE_RES.values():
        spans += [m.span(1) for m in rx.finditer(caption)]
    return sorted(spans)


def check_caption(caption: str, *, require_keys: bool = True) -> dict:
    """Parse a caption strictly: it must be a JSON object (and, if `require_keys`, hold the 4 keys as strings)."""
    if not isinstance(caption, str):
        raise CaptionError(f"caption must be a str, got {type(caption).__name__}: {_quote(str(caption))}")
    try:
        obj = json.loads(caption)
    except json.JSONDecodeError as e:
        raise CaptionError(f"caption {_quote(caption)} is not valid JSON: {e.msg} at char {e.pos}") from None
    if not isinstance(obj, dict):
        raise CaptionError(f"caption {_quote(caption)} must be a JSON object, got {type(obj).__name__}")
    if require_keys:
        missing = [k for k in CAPTION_KEYS if not isinstance(obj.get(k), str)]
        if missing:
            raise CaptionError(f"caption {_quote(caption)} lacks string value(s) for {missing}; "
                               f"expected keys {list(CAPTION_KEYS)}")
    return obj


# ------------------------------------------------------------------------------------------------- tokenizer
class CaptionTokenizer:
    """A T5 tokenizer with the DualFashion conventions: pad = EOS, fixed length, looked-up mask id, label masks."""

    def __init__(self, hf_tokenizer, *, max_length: int = 256, min_base_vocab: int = MIN_BASE_VOCAB,
                 source: str = "<in-memory>"):
        tok = hf_tokenizer
        n_extra = sum(1 for t in tok.get_vocab() if t.startswith("<extra_id_"))
        base = len(tok) - n_extra
        if base < min_base_vocab:
            raise TokenizerError(
                f"tokenizer from {source} has only {base} base pieces (+{n_extra} extra ids); this looks like "
                f"transformers' silent stub, not a real vocabulary (need >= {min_base_vocab}). Point to a directory "
                "holding spiece.model / tokenizer.json (e.g. the SD3 checkpoint's tokenizer_3/)")
        mask_id = tok.convert_tokens_to_ids(MASK_TOKEN)
        if mask_id is None or mask_id == tok.unk_token_id:
            raise TokenizerError(f"tokenizer from {source} has no {MASK_TOKEN!r} token (needed as the MASK id); "
                                 "load it with extra ids (T5 has 100)")
        if tok.eos_token is None:
            raise TokenizerError(f"tokenizer from {source} has no EOS token")
        tok.pad_token = tok.eos_token  # DualFashion pads with </s> (spec §1.3)
        self.hf = tok
        self.max_length = int(max_length)
        self.mask_id = int(mask_id)
        self.pad_id = int(tok.pad_token_id)
        self.eos_id = int(tok.eos_token_id)
        self.vocab_size = len(tok)
        self.source = source
        self.truncation = Truncation()  # every text encoded so far, and how many of them were cut

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, max_length: int = 256, **kw) -> "CaptionTokenizer":
        """Load from a LOCAL directory only (hub ids could silently yield a stub, deps.md gotcha 7)."""
        p = Path(path)
        if not p.is_dir():
            raise TokenizerError(f"tokenizer directory {p} not found (expected spiece.model and/or tokenizer.json)")
        if not any((p / f).is_file() for f in ("spiece.model", "tokenizer.json")):
            raise TokenizerError(f"{p}: neither spiece.model nor tokenizer.json present")
        from transformers import T5Tokenizer  # local: transformers takes ~1 s to import; only loading needs it

        try:
            tok = T5Tokenizer.from_pretrained(str(p))
        except (OSError, ValueError) as e:
            raise TokenizerError(f"{p}: cannot load a T5 tokenizer: {e}") from None
        register_user_symbols(tok, p / "spiece.model")
        return cls(tok, max_length=max_length, source=str(p), **kw)

    def _call(self, texts: Sequence[str], offsets: bool):
        enc = self.hf(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                      add_special_tokens=True, return_offsets_mapping=offsets)
        self.truncation.add(texts, self._truncated(texts, enc))
        return enc

    def _truncated(self, texts: Sequence[str], enc) -> list[bool]:
        """Per text: was it cut to max_length (the backend's overflow, else an untruncated length check)."""
        if getattr(enc, "encodings", None) is not None:
            return [bool(e.overflowing) for e in enc.encodings]
        return [n > self.max_length for n in self.lengths(texts)]

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Untruncated token counts (EOS included) of `texts`."""
        return [len(x) for x in self.hf(list(texts), add_special_tokens=True, truncation=False)["input_ids"]]

    def count_truncated(self, texts: Iterable[str], *, batch_size: int = 4096) -> Truncation:
        """How many of `texts` are longer than max_length tokens (a scan; the tokenizer's own count is untouched)."""
        texts, out = list(texts), Truncation()
        for i in range(0, len(texts), batch_size):
            chunk = texts[i:i + batch_size]
            enc = self.hf(chunk, truncation=True, max_length=self.max_length, add_special_tokens=True)
            out.add(chunk, self._truncated(chunk, enc))
        return out

    def check_scaffold(self, keys: Sequence[str] = CAPTION_KEYS) -> int:
        """The token count of a 4-key caption with one-letter values; TokenizerError if it exceeds max_length."""
        skeleton = caption_json({k: SKELETON_VALUE for k in keys})
        n = self.lengths([skeleton])[0]
        if n > self.max_length:
            pieces = self.hf.convert_ids_to_tokens(self.hf(skeleton)["input_ids"])
            raise TokenizerError(
                f"tokenizer {self.source}: the caption scaffold {skeleton!r} takes {n} tokens (EOS included), more "
                f"than max_length={self.max_length}, so every caption would be truncated; pieces: {pieces}. Raise "
                "max_length or use a tokenizer whose scaffold pieces ('{\"', 'Color\": \"', ...) are single tokens")
        return n

    def encode(self, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts -> (ids [N, max_length] int32, attention_mask [N, max_length] int32)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        enc = self._call(texts, offsets=False)
        return (np.asarray(enc["input_ids"], np.int32).reshape(len(texts), self.max_length),
                np.asarray(enc["attention_mask"], np.int32).reshape(len(texts), self.max_length))

    def encode_captions(self, captions: Sequence[str], *, require_keys: bool = True
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Caption JSON strings -> (ids, attention_mask, label_mask), each [N, max_length] int32."""
        captions = list(captions)
        for c in captions:
            check_caption(c, require_keys=require_keys)
        enc = self._call(captions, offsets=True)
        ids = np.asarray(enc["input_ids"], np.int32).reshape(len(captions), self.max_length)  # [N, L]
        attn = np.asarray(enc["attention_mask"], np.int32).reshape(ids.shape)  # [N, L]
        labels = np.zeros_like(ids)
        for n, (cap, offs) in enumerate(zip(captions, enc["offset_mapping"])):
            spans = value_spans(cap)
            if not spans:
                continue
            offs = np.asarray(offs, np.int64).reshape(-1, 2)  # [L, 2] char [start, end)
            for vs, ve in spans:
                labels[n] |= ((offs[:, 0] < ve) & (offs[:, 1] > vs)).astype(np.int32)
        return ids, attn, labels * attn

    def encode_caption(self, json_str: str, *, require_keys: bool = True
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One caption JSON string -> (ids, attention_mask, label_mask), each [max_length] int32."""
        ids, attn, labels = self.encode_captions([json_str], require_keys=require_keys)
        return ids[0], attn[0], labels[0]

    def decode(self, ids: np.ndarray | Sequence[Sequence[int]], *, skip_special_tokens: bool = True) -> list[str]:
        """ids [N, L] -> N strings (padding, EOS and, by default, MASK/extra ids dropped)."""
        ids = np.asarray(ids)
        ids = ids[None] if ids.ndim == 1 else ids
        texts = self.hf.batch_decode(ids.tolist(), skip_special_tokens=skip_special_tokens)
        return [_VALUE_START_SPACE.sub(r"\1", t) for t in texts]


# ------------------------------------------------------------------------------------- sentencepiece user symbols
def spm_user_symbols(spiece: str | os.PathLike) -> list[tuple[int, str]]:
    """(id, piece) of every USER_DEFINED piece of a sentencepiece model file."""
    proto = pb.ModelProto()
    proto.ParseFromString(Path(spiece).read_bytes())
    return [(i, p.piece) for i, p in enumerate(proto.pieces) if p.type == pb.ModelProto.SentencePiece.USER_DEFINED]


def register_user_symbols(hf_tokenizer, spiece: str | os.PathLike) -> None:
    """Make every user-defined piece of `spiece` (if the file exists) an added token that keeps its id.

    transformers 5.23 converts those pieces to added tokens (split out of the raw text, never normalized); 5.25
    does so only for BPE models, so a unigram model's pieces meet T5's whitespace pre-tokenizer and are cut
    apart. Registering them here gives identical ids whatever the version; TokenizerError if one then is not
    exactly one token of its own id.
    """
    from transformers import AddedToken  # local: transformers takes ~1 s to import

    path = Path(spiece)
    if not path.is_file():
        return
    symbols = spm_user_symbols(path)
    if not symbols:
        return
    vocab = hf_tokenizer.get_vocab()
    moved = [(s, i, vocab.get(s)) for i, s in symbols if vocab.get(s) != i]
    if moved:
        raise TokenizerError(f"{path}: user-defined pieces have other ids in the loaded tokenizer "
                             f"(piece, spiece id, loaded id): {moved[:5]}")
    hf_tokenizer.add_tokens([AddedToken(s, normalized=False, special=False, lstrip=False, rstrip=False,
                                        single_word=False) for _, s in symbols])
    got = hf_tokenizer([s for _, s in symbols], add_special_tokens=False)["input_ids"]
    bad = [(s, g) for (i, s), g in zip(symbols, got) if list(g) != [i]]
    if bad:
        raise TokenizerError(f"{path}: user-defined pieces do not encode to their one id (piece, ids): {bad[:5]}")


# --------------------------------------------------------------------------------------- test tokenizer builder
def _bpe_as_fewest_pieces_unigram(model: bytes) -> bytes:
    """A trained BPE sentencepiece model re-labelled as a unigram model whose normal pieces all score -1.

    transformers reads every spiece.model as a unigram model and picks the segmentation with the highest total
    score; BPE scores are minus the merge rank, so it preferred short early pieces ("black" -> "b", "la", "ck")
    over the learned words. With equal scores both sentencepiece and transformers pick the fewest pieces.
    """
    proto = pb.ModelProto()
    proto.ParseFromString(model)
    proto.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    for piece in proto.pieces:
        if piece.type == pb.ModelProto.SentencePiece.NORMAL:
            piece.score = -1.0
    return proto.SerializeToString()


def caption_scaffold(keys: Iterable[str] = CAPTION_KEYS) -> list[str]:
    """The fixed strings of `caption_json`-style captions with `keys`: '{"', '<key>": "', '", "', '"}'."""
    return ['{"', '", "', '"}'] + [f'{k}": "' for k in keys]


def build_test_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, *, vocab_size: int = 256,
                         extra_ids: int = 100, max_length: int = 256, model_type: str = "unigram",
                         user_symbols: Sequence[str] = ()) -> CaptionTokenizer:
    """Train a small sentencepiece unigram model with T5's id layout (pad 0, eos 1, unk 2, no bos) and save it.

    Writes `out_dir/spiece.model` plus the transformers files, so `CaptionTokenizer.from_pretrained(out_dir)`
    reloads it. `vocab_size` is a soft limit (small corpora yield fewer pieces). Used by tests and the demo.
    `model_type="bpe"` suits tiny, repetitive corpora (the demo's), where unigram seeding finds only ~70 pieces.
    `user_symbols` (e.g. `caption_scaffold(...)`, fixed sentence parts) become single pieces, so a 4-key
    caption takes ~23 tokens instead of ~38. They are added tokens (`register_user_symbols`): the text is split
    at them and every chunk gets the word marker, so the model is trained on those chunks ('▁word' pieces).
    """
    from transformers import T5Tokenizer  # local: transformers takes ~1 s to import; only loading/building needs it

    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("build_test_tokenizer: no training texts given")
    if extra_ids < 1:
        raise ValueError(f"build_test_tokenizer: extra_ids must be >= 1 (the MASK is <extra_id_0>), got {extra_ids}")
    symbols = sorted({s for s in user_symbols if s.strip()}, key=lambda s: (-len(s), s))  # longest first, fixed ids
    if symbols:
        split = re.compile("|".join(map(re.escape, symbols)))
        texts = [c.strip() for t in texts for c in split.split(t) if c.strip()] + symbols
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=int(vocab_size), model_type=model_type,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, character_coverage=1.0,
        minloglevel=2, num_threads=1, **({"user_defined_symbols": symbols} if symbols else {}))
    model = buf.getvalue() if model_type != "bpe" else _bpe_as_fewest_pieces_unigram(buf.getvalue())
    (out / "spiece.model").write_bytes(model)
    tok = T5Tokenizer.from_pretrained(str(out), extra_ids=int(extra_ids))
    register_user_symbols(tok, out / "spiece.model")
    n_extra = sum(1 for t in tok.get_vocab() if t.startswith("<extra_id_"))
    if n_extra != extra_ids:
        raise TokenizerError(f"{out}: expected {extra_ids} extra ids after loading, found {n_extra}")
    tok.save_pretrained(str(out))
    wrapped = CaptionTokenizer.from_pretrained(out, max_length=max_length)
    if wrapped.vocab_size != len(tok):
        raise TokenizerError(f"{out}: reloaded vocab {wrapped.vocab_size} != trained {len(tok)}")
    return wrapped
