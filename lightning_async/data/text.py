"""A text file as byte-level language-modelling data, or generated text for tests."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset

from lightning_async.data._base import SplitDataModule, check_fractions, check_positive_int
from lightning_async.data.corpora import CORPORA, DEFAULT_DATA_DIR, corpus_path

_WORDS = {
    "det": ["the", "a", "every", "some", "one"],
    "adj": ["quick", "lazy", "red", "quiet", "old", "bright", "small", "stale", "async", "bounded"],
    "noun": ["fox", "dog", "worker", "server", "gradient", "river", "node", "model", "batch", "block"],
    "verb": ["jumps over", "waits for", "updates", "follows", "reads", "pushes to", "sees", "outruns"],
}


def generate_text(num_chars: int, seed: int = 0) -> str:
    """Deterministic English-like text (sentences from a tiny grammar), for tests and demos.

    Args:
        num_chars: Length of the text, in characters (ASCII, so also in bytes).
        seed: Seed of the generator.

    Returns:
        A string of exactly ``num_chars`` characters.
    """
    check_positive_int("num_chars", num_chars)
    rng = random.Random(seed)
    parts: list[str] = []
    length = 0
    while length < num_chars:
        sentence = (
            f"{rng.choice(_WORDS['det'])} {rng.choice(_WORDS['adj'])} {rng.choice(_WORDS['noun'])} "
            f"{rng.choice(_WORDS['verb'])} {rng.choice(_WORDS['det'])} {rng.choice(_WORDS['noun'])}."
        ).capitalize()
        sentence += "\n" if rng.random() < 0.2 else " "
        parts.append(sentence)
        length += len(sentence)
    return "".join(parts)[:num_chars]


class BlockDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Windows of ``block_size`` tokens and their next-token targets, every ``stride`` tokens.

    Args:
        tokens: 1-D ``int64`` tensor of token ids.
        block_size: Window length.
        stride: Distance between the starts of consecutive windows.
    """

    def __init__(self, tokens: torch.Tensor, block_size: int, stride: int) -> None:
        self.tokens = tokens
        self.block_size = block_size
        self.stride = stride

    def __len__(self) -> int:
        return (len(self.tokens) - self.block_size - 1) // self.stride + 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = index * self.stride
        chunk = self.tokens[start : start + self.block_size + 1]
        return chunk[:-1], chunk[1:]


class TextDataModule(SplitDataModule):
    """Byte-level language modelling on a real corpus, a text file the user names, or generated text.

    Where the text comes from, first match wins: ``synthetic=True`` (generated); ``path`` (your file);
    otherwise ``corpus``: ``"python_docs"`` (the default: about 1 MB of the Python standard library's
    documentation, built offline from the running interpreter, no download) or ``"tiny_shakespeare"`` (downloaded
    once into ``data_dir`` with ``download=True``, then read from there). See :mod:`lightning_async.data.corpora`.

    The text is read as raw bytes (UTF-8 text becomes its bytes, so ``vocab_size`` is 256 whatever the file) and
    split contiguously: the first part for training, then ``val_fraction`` for validation and ``test_fraction`` for
    testing. Training samples are all windows of ``block_size`` bytes (one per start position, shuffled);
    validation and test use non-overlapping windows.

    ``synthetic=True`` ignores ``path`` and generates ``synthetic_size`` characters of English-like text from a
    tiny grammar (see :func:`generate_text`); the tests use it.

    Args:
        path: Path of a text file to train on instead of ``corpus``.
        corpus: The corpus used when neither ``path`` nor ``synthetic`` is given: ``"python_docs"`` or
            ``"tiny_shakespeare"``.
        data_dir: Cache folder of the corpora.
        download: Download ``tiny_shakespeare`` into ``data_dir`` if it is not there yet.
        block_size: Context length of each sample, in bytes. Must not exceed the model's ``block_size``.
        batch_size: Samples per batch, per worker.
        val_fraction: Fraction of the file used for validation.
        test_fraction: Fraction of the file used for testing.
        train_stride: Distance between the starts of consecutive training windows (1 uses every position).
        synthetic: Use generated text instead of ``path``.
        synthetic_size: Number of generated characters when ``synthetic=True``.
        seed: Seed of the generated text.
        num_workers: DataLoader worker processes.

    Example::

        >>> dm = TextDataModule(synthetic=True, synthetic_size=2000, block_size=16, batch_size=4)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), bool((x[:, 1:] == y[:, :-1]).all())
        ((4, 16), True)
    """

    vocab_size = 256

    def __init__(
        self,
        path: str | None = None,
        corpus: Literal["python_docs", "tiny_shakespeare"] = "python_docs",
        data_dir: str = DEFAULT_DATA_DIR,
        download: bool = False,
        block_size: int = 128,
        batch_size: int = 32,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        train_stride: int = 1,
        synthetic: bool = False,
        synthetic_size: int = 100_000,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        check_positive_int("block_size", block_size)
        check_positive_int("train_stride", train_stride)
        check_positive_int("synthetic_size", synthetic_size)
        check_fractions(val_fraction=val_fraction, test_fraction=test_fraction)
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if value <= 0:
                raise ValueError(f"`{name}` must be in (0, 1), got {value!r}.")
        if corpus not in CORPORA:
            raise ValueError(f"TextDataModule: corpus must be one of {CORPORA}, got {corpus!r}.")
        if not synthetic and path is not None:
            file = Path(path).expanduser()
            if not file.is_file():
                raise FileNotFoundError(
                    f"TextDataModule: `path` must be an existing text file, got {path!r} (resolved to "
                    f"{str(file.resolve())!r}), which does not exist or is not a file. Check "
                    f"`--data.path`, or use `--data.synthetic=true` for generated text."
                )
        self.save_hyperparameters()
        self.path = path
        self.corpus = corpus
        self.data_dir = data_dir
        self.download = download
        self.block_size = block_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.train_stride = train_stride
        self.synthetic = synthetic
        self.synthetic_size = synthetic_size
        self.seed = seed

    @property
    def source(self) -> str:
        """Where the text comes from, in words (for messages)."""
        if self.synthetic:
            return "the generated text"
        return repr(self.path) if self.path is not None else f"the {self.corpus} corpus"

    def prepare_data(self) -> None:
        """Build or download the corpus into ``data_dir`` (once per node, before any worker reads it)."""
        if not self.synthetic and self.path is None:
            corpus_path(self.corpus, self.data_dir, self.download)

    def load_bytes(self) -> bytes:
        """The raw text: generated (ASCII), the user's file, or the corpus from ``data_dir``."""
        if self.synthetic:
            return generate_text(self.synthetic_size, self.seed).encode("ascii")
        if self.path is not None:
            return Path(self.path).expanduser().read_bytes()
        return corpus_path(self.corpus, self.data_dir, self.download).read_bytes()

    def setup(self, stage: str | None = None) -> None:
        """Read the corpus and cut it into train, validation and test windows."""
        if self.train_set is not None:
            return
        data = self.load_bytes()
        tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
        total = len(tokens)
        n_val = int(total * self.val_fraction)
        n_test = int(total * self.test_fraction)
        n_train = total - n_val - n_test
        splits = {
            "train": tokens[:n_train],
            "val": tokens[n_train : n_train + n_val],
            "test": tokens[n_train + n_val :],
        }
        source = self.source
        for name in ("train", "val", "test"):
            if len(splits[name]) < self.block_size + 1:
                raise ValueError(
                    f"TextDataModule: the {name} split of {source} has {len(splits[name])} bytes (of {total}), "
                    f"fewer than block_size + 1 = {self.block_size + 1}. Use a longer text, a smaller "
                    f"`--data.block_size`, or a larger `--data.{name}_fraction`"
                    + (" / `--data.synthetic_size`." if self.synthetic else ".")
                )
        self.train_set = BlockDataset(splits["train"], self.block_size, self.train_stride)
        self.val_set = BlockDataset(splits["val"], self.block_size, self.block_size)
        self.test_set = BlockDataset(splits["test"], self.block_size, self.block_size)
