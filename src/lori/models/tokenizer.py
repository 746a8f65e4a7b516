"""The project's small-vocabulary tokenizer for built-in tasks, as a standard ``PreTrainedTokenizerFast``.

Built-in tasks (multiplication) are written as whitespace-separated symbols, so a word-level vocabulary of the
symbols seen in the data is exact and tiny: the output layer, not the transformer, dominates the cost of tiny
models. It is saved with every checkpoint with ``save_pretrained`` and reloads with ``AutoTokenizer``, so
built-in and Hugging Face models go through one code path.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ..errors import DataError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
# Latent-reasoning markers, always in the built-in vocabulary so that a teacher and its students share ids.
BOT, EOT = "<bot>", "<eot>"
SPECIALS = [PAD, BOS, EOS, UNK, BOT, EOT]
# Structural symbols of the rendering (see lori.data.render), always present.
STRUCTURAL = ["||", "####"]


def build_word_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is the specials, the structural symbols and every whitespace-
    separated symbol in ``texts`` (sorted, so the same data always gives the same ids)."""
    symbols = set()
    for text in texts:
        symbols.update(text.split())
    vocab_list = SPECIALS + STRUCTURAL + sorted(symbols - set(SPECIALS) - set(STRUCTURAL))
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # No decoder: tokenizers then joins words with single spaces, which is exactly the written form.
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=[BOT, EOT],
        padding_side="left",
    )
    return tok


def build_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE of ``vocab_size`` tokens trained on ``texts`` (deterministic for the same texts) that writes a
    number digit by digit, so results take one to several tokens as GSM8k-Aug's do under SmolLM2's or a LLaMA
    tokenizer (``model.tokenizer: bpe``)."""
    core = Tokenizer(models.BPE(unk_token=None))
    # digits one by one, as the LLaMA-family and SmolLM2 tokenizers split them
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  pre_tokenizers.ByteLevel(add_prefix_space=False)])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator([*texts, " ".join(STRUCTURAL)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   additional_special_tokens=[BOT, EOT], padding_side="left")


def word_vocabulary(tokenizer) -> dict[str, int] | None:
    """The vocabulary of a word-level tokenizer (this module's); None for a subword tokenizer, which spells any text
    in bytes and has no unknown words."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not isinstance(backend.model, models.WordLevel):
        return None
    return tokenizer.get_vocab()


def unknown_words(tokenizer, text: str, vocab: dict[str, int] | None = None) -> list[str]:
    """The words of ``text`` a word-level tokenizer reads as ``<unk>``, in order, once each (none for a subword
    tokenizer). ``vocab``: its :func:`word_vocabulary`, when already at hand."""
    vocab = word_vocabulary(tokenizer) if vocab is None else vocab
    return [] if vocab is None else [w for w in dict.fromkeys(text.split()) if w not in vocab]


def check_vocabulary(tokenizer, examples, field: str) -> None:
    """Refuse a problem (question, rationale or answer) with a non-ASCII character no word of a word-level vocabulary
    holds, naming its file and line: its word would be read as ``<unk>``, so fullwidth digits or a ``−`` in a data
    file would be scored silently. (Unseen ASCII words, natural text's usual gap in a tiny vocabulary, are left
    alone.)"""
    vocab = word_vocabulary(tokenizer)
    if vocab is None:
        return
    chars = set("".join(w for w in vocab if w not in SPECIALS))
    seen: set[str] = set()
    for ex in examples:  # the characters of all problems first (fast), then the first problem with a bad one
        seen.update(ex.question, ex.rationale, ex.answer)
    unseen = {c for c in seen - chars if not c.isascii() and not c.isspace()}
    if not unseen:
        return
    for ex in examples:
        text = f"{ex.question} {ex.rationale} {ex.answer}"
        bad = next((c for c in text if c in unseen), None)
        if bad is not None:
            word = next(w for w in text.split() if bad in w)
            path, _, line = (ex.source or "?").rpartition(":")
            raise DataError(path or ex.source, int(line) if line.isdigit() else None,
                            f"{bad!r} (U+{ord(bad):04X}, in {word!r}) is a character the model's word-level vocabulary "
                            f"never saw: {word!r} would be read as {UNK}",
                            f"the vocabulary is the words of the training data the model was built from: write "
                            f"{field} as that data is written (e.g. ASCII digits and operators)")
