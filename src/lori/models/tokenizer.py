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
