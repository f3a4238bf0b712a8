"""The text corpora: the offline default built from the interpreter's documentation, and the download path of
tiny Shakespeare, exercised on a local copy through a ``file://`` URL (the tests never touch the network)."""

from __future__ import annotations

import pytest

from lightning_async.data import TextDataModule, corpora
from lightning_async.data.corpora import corpus_path, python_docs_text


def test_python_docs_is_real_deterministic_text_of_a_useful_size():
    text = python_docs_text()
    assert text == python_docs_text()
    assert len(text.encode("utf-8")) > 500_000
    assert "# json\n" in text and "## json.dumps\n" in text and "Serialize" in text


def test_the_default_text_module_trains_on_python_docs_without_download(tmp_path):
    dm = TextDataModule(data_dir=str(tmp_path), block_size=32, batch_size=4, train_stride=32)
    dm.prepare_data()
    cached = list(tmp_path.glob("python_docs-*.txt"))
    assert len(cached) == 1 and cached[0].read_text(encoding="utf-8") == python_docs_text()
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 32) and bool((x[:, 1:] == y[:, :-1]).all())
    assert len(dm.train_set) > 10_000  # about 1 MB in 32-byte windows


def _fake_shakespeare(tmp_path, size=corpora.TINY_SHAKESPEARE_BYTES):
    source = tmp_path / "mirror" / "input.txt"
    source.parent.mkdir()
    line = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
    source.write_bytes((line * (size // len(line) + 1))[:size])
    return source


def test_tiny_shakespeare_needs_download_then_is_read_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match=r"--data.download=true.*--data.corpus=python_docs"):
        corpus_path("tiny_shakespeare", cache, download=False)
    url = _fake_shakespeare(tmp_path).as_uri()
    path = corpus_path("tiny_shakespeare", cache, download=True, url=url)
    assert path == cache / "tiny_shakespeare.txt" and path.stat().st_size == corpora.TINY_SHAKESPEARE_BYTES
    # cached: no second download (the mirror is gone)
    (tmp_path / "mirror" / "input.txt").unlink()
    assert corpus_path("tiny_shakespeare", cache, download=True, url=url) == path


def test_a_truncated_download_is_refused_and_not_cached(tmp_path):
    url = _fake_shakespeare(tmp_path, size=1000).as_uri()
    with pytest.raises(RuntimeError, match=r"has 1,000 bytes, expected 1,115,394"):
        corpus_path("tiny_shakespeare", tmp_path / "cache", download=True, url=url)
    assert not (tmp_path / "cache" / "tiny_shakespeare.txt").exists()


def test_the_module_reads_the_downloaded_corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora, "TINY_SHAKESPEARE_URL", _fake_shakespeare(tmp_path).as_uri())
    monkeypatch.setattr(corpora.corpus_path, "__defaults__", (corpora.DEFAULT_DATA_DIR, False,
                                                               corpora.TINY_SHAKESPEARE_URL))
    dm = TextDataModule(corpus="tiny_shakespeare", data_dir=str(tmp_path / "c"), download=True, block_size=64)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.load_bytes().startswith(b"First Citizen:")
