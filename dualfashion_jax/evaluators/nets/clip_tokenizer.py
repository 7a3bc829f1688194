"""CLIP byte-level BPE tokenizer (open_clip `SimpleTokenizer` semantics), pure Python, context 77.

The merges file is CLIP's `bpe_simple_vocab_16e6.txt.gz` (shipped in the open-clip-torch wheel; also copied next to
converted CLIP checkpoints). Text is cleaned like open_clip's default 'lower' mode (ftfy if installed, HTML unescape,
whitespace collapse, lower-case), split with CLIP's regex, BPE-merged, and wrapped as [SOT] ... [EOT] with zero
padding; over-long inputs are truncated to 77 with EOT kept in the last position (as open_clip does).
"""
from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import os
import pathlib
from typing import Sequence

import numpy as np
import regex

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
CONTEXT_LENGTH = 77
_NUM_MERGES = 49152 - 256 - 2  # open_clip reads merges[1 : 49152 - 256 - 2 + 1]


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable unicode map (256 entries)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def find_bpe_file(explicit: str | os.PathLike | None = None) -> pathlib.Path:
    """The merges file: `explicit` if given, else the copy inside an installed open-clip-torch (not imported)."""
    if explicit is not None:
        p = pathlib.Path(explicit)
        if p.is_dir():
            p = p / BPE_FILENAME
        if not p.is_file():
            raise FileNotFoundError(f"{p}: CLIP BPE merges file not found (expected {BPE_FILENAME})")
        return p
    spec = importlib.util.find_spec("open_clip")  # locating the package does not execute its __init__
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = pathlib.Path(loc) / BPE_FILENAME
        if p.is_file():
            return p
    raise FileNotFoundError(
        f"CLIP BPE merges file {BPE_FILENAME} not found: install open-clip-torch==3.3.0 with --no-deps (it ships the "
        f"file) or pass its path explicitly")


def _clean(text: str) -> str:
    try:
        import ftfy  # optional: open_clip applies it; it only changes mojibake text
        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).strip().lower()


class CLIPTokenizer:
    """`tok(texts) -> int32 [N, 77]` CLIP token ids; `tok.vocab_size`, `tok.sot_id`, `tok.eot_id`."""

    def __init__(self, bpe_path: str | os.PathLike | None = None, context_length: int = CONTEXT_LENGTH):
        self.bpe_path = find_bpe_file(bpe_path)
        try:
            lines = gzip.open(self.bpe_path).read().decode("utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.bpe_path}: not a gzip'd CLIP merges file ({e})") from e
        merges = []
        for i, line in enumerate(lines[1:_NUM_MERGES + 1], start=2):
            if not line.strip():
                continue
            parts = tuple(line.split())
            if len(parts) != 2:
                raise ValueError(f"{self.bpe_path}: line {i} is not a merge pair: {line!r}")
            merges.append(parts)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        vocab += ["<start_of_text>", "<end_of_text>"]
        self.encoder = {t: i for i, t in enumerate(vocab)}
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.sot_id = self.encoder["<start_of_text>"]
        self.eot_id = self.encoder["<end_of_text>"]
        self.vocab_size = len(vocab)
        self.context_length = int(context_length)
        self._cache: dict[str, str] = {}
        self._pat = regex.compile(
            r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE)

    def _bpe(self, token: str) -> str:
        if token in self._cache:
            return self._cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word[:-1], word[1:])}
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        self._cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of one text without SOT/EOT and without truncation."""
        ids = []
        for token in self._pat.findall(_clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(token).split(" "))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Inverse of `encode` (special tokens and padding 0s dropped)."""
        text = "".join(self.decoder[int(i)] for i in ids if int(i) not in (self.sot_id, self.eot_id, 0))
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """texts -> int32 [N, context_length]: [SOT] ids [EOT] 0..., truncated with EOT kept last."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.context_length), np.int32)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"CLIPTokenizer: text {i} is {type(t).__name__}, expected str")
            ids = [self.sot_id] + self.encode(t) + [self.eot_id]
            if len(ids) > self.context_length:
                ids = ids[:self.context_length]
                ids[-1] = self.eot_id
            out[i, :len(ids)] = ids
        return out
