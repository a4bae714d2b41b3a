"""The small built-in tokenizer that goes with the tiny Qwen3-VL config, and tokenizer loading.

Nothing can be downloaded here, so the tiny config needs a tokenizer made in code: a
word-level vocabulary (the `tokenizers` library) whose special tokens sit at the ids the
tiny config expects (pad=0, image=1, video=2, vision_start=3, vision_end=4) and which holds
every word of the fixed reranking question plus the answers " yes" / " no". A real
checkpoint directory brings its own `tokenizer.json`, loaded with `load_tokenizer`.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from models.qwen3vl_configs import TINY_SPECIAL, TINY_VOCAB

SPECIAL_TOKENS = {
    "pad": "<|endoftext|>",
    "image": "<|image_pad|>",
    "video": "<|video_pad|>",
    "vision_start": "<|vision_start|>",
    "vision_end": "<|vision_end|>",
}
UNK = "<|unk|>"
# Words of the default question and a few neighbours; "▁" marks a leading space (Metaspace).
_WORDS = [
    "yes",
    "no",
    "Is",
    "is",
    "the",
    "a",
    "an",
    "second",
    "first",
    "image",
    "item",
    "relevant",
    "to",
    "for",
    "of",
    "and",
    "or",
    "Answer",
    "Question",
    "Would",
    "someone",
    "who",
    "saved",
    "also",
    "save",
    "like",
    "this",
    "that",
    "same",
    "style",
]
_PUNCT = list("?:.,!'\"()-")


def build_tiny_tokenizer() -> Tokenizer:
    """A word-level tokenizer with the tiny config's special ids and the question's words."""
    vocab = {SPECIAL_TOKENS[name]: idx for name, idx in TINY_SPECIAL.items()}
    vocab[UNK] = len(vocab)
    for w in _WORDS:
        for tok in (w, "▁" + w):
            vocab.setdefault(tok, len(vocab))
    for p in _PUNCT:
        vocab.setdefault(p, len(vocab))
    assert len(vocab) <= TINY_VOCAB, f"tiny vocab {len(vocab)} exceeds config vocab {TINY_VOCAB}"
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(prepend_scheme="never"), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.Metaspace(prepend_scheme="never")
    tok.add_special_tokens([*SPECIAL_TOKENS.values(), UNK])
    return tok


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load `tokenizer.json` from a checkpoint directory (never the network)."""
    path = Path(directory) / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer.json in checkpoint directory {directory}")
    return Tokenizer.from_file(str(path))


def encode_text(tok: Tokenizer, text: str) -> list[int]:
    """Token ids of `text` without any special tokens added; unknown words are an error."""
    enc = tok.encode(text, add_special_tokens=False)
    unk = tok.token_to_id(UNK)
    if unk is not None and unk in enc.ids:
        bad = [t for t, i in zip(enc.tokens, enc.ids, strict=True) if i == unk]
        raise ValueError(f"text {text!r} has words outside the tokenizer's vocabulary: {bad}")
    return list(enc.ids)


def single_token_id(tok: Tokenizer, text: str) -> int:
    """The one token id of `text` (e.g. " yes"); an error when it splits into several."""
    ids = encode_text(tok, text)
    if len(ids) != 1:
        raise ValueError(f"answer {text!r} must be exactly one token, got ids {ids}")
    return ids[0]
