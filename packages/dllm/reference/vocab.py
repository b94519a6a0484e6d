"""The reference diffusion LM's vocabulary: one token per word of the synthetic tasks (:mod:`.tasks`),
as a Hugging Face fast tokenizer that ``AutoTokenizer.from_pretrained`` loads from a local folder,
like LLaDA's own.

Word-level on purpose: a digit, a letter or a key is one token, so the tasks test retrieval,
arithmetic and copying rather than spelling, and a 300-token prompt is 300 words.
"""

from __future__ import annotations

from pathlib import Path

SPECIALS = ("<pad>", "<unk>", "<eos>", "<mask>")
DIGITS = tuple("0123456789")
LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")
KEYS = tuple(f"k{i:02d}" for i in range(100))
SYMBOLS = ("=", ";", "+", ":", "->")
WORDS = ("find", "add", "copy", "reverse")
TOKENS: tuple[str, ...] = SPECIALS + DIGITS + LETTERS + KEYS + SYMBOLS + WORDS
IDS = {t: i for i, t in enumerate(TOKENS)}
PAD_ID, EOS_ID, MASK_ID = IDS["<pad>"], IDS["<eos>"], IDS["<mask>"]


def build_tokenizer():
    """A ``PreTrainedTokenizerFast`` over :data:`TOKENS`: whitespace-split words, ``<unk>`` otherwise."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab=dict(IDS), unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="<eos>", mask_token="<mask>", padding_side="left")


def save_tokenizer(path: str | Path) -> None:
    build_tokenizer().save_pretrained(str(path))
