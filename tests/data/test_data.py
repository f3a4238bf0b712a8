"""Recipe data modules: shapes, determinism, splits, the torchvision hint, and input validation."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lightning_async.data import CIFAR10DataModule, DigitsDataModule, MNISTDataModule, TextDataModule, generate_text

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def _all(dataset):
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.stack(ys)


def test_digits_split_is_deterministic_disjoint_and_standardised():
    a, b = DigitsDataModule(), DigitsDataModule()
    a.setup("fit")
    b.setup("fit")
    sizes = [len(a.train_set), len(a.val_set), len(a.test_set)]
    assert sum(sizes) == 1797 and sizes[1] == sizes[2] == 270
    xa, ya = _all(a.train_set)
    xb, _ = _all(b.train_set)
    assert torch.equal(xa, xb)
    assert xa.shape == (sizes[0], 64) and ya.dtype == torch.long
    assert xa.mean(0).abs().max() < 1e-5
    assert set(ya.tolist()) == set(range(10))
    rows = {tuple(r.tolist()) for r in xa}
    assert not rows & {tuple(r.tolist()) for r in _all(a.test_set)[0]}
    c = DigitsDataModule(split_seed=1)
    c.setup("fit")
    assert not torch.equal(_all(c.train_set)[0], xa)


@pytest.mark.parametrize(("cls", "shape"), [(MNISTDataModule, (1, 28, 28)), (CIFAR10DataModule, (3, 32, 32))])
def test_synthetic_images_have_real_shapes_and_are_deterministic(cls, shape):
    dm = cls(synthetic=True, synthetic_size=40, batch_size=8)
    dm.prepare_data()  # no download, no torchvision
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (40, 10, 11)
    x, y = next(iter(dm.val_dataloader()))
    assert tuple(x.shape) == (8, *shape) and x.dtype == torch.float32 and y.dtype == torch.long
    again = cls(synthetic=True, synthetic_size=40)
    again.setup("fit")
    assert torch.equal(_all(again.train_set)[0], _all(dm.train_set)[0])
    # Learnable: the class prototypes are shared by train and validation, so a nearest-mean rule beats chance.
    xt, yt = _all(dm.train_set)
    means = torch.stack([xt[yt == k].mean(0) for k in range(10)]).flatten(1)
    xv, yv = _all(dm.val_set)
    accuracy = ((torch.cdist(xv.flatten(1), means).argmin(1) == yv).float().mean())
    assert accuracy > 0.5


@pytest.mark.skipif(HAS_TORCHVISION, reason="checks the hint shown when torchvision is missing")
@pytest.mark.parametrize("cls", [MNISTDataModule, CIFAR10DataModule])
def test_real_images_without_torchvision_say_how_to_fix(cls, tmp_path):
    with pytest.raises(ModuleNotFoundError, match=r"lightning-async\[vision\].*--data.synthetic=true"):
        cls(data_dir=str(tmp_path))  # when built, before any worker process starts


def test_dataloader_before_setup_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"DigitsDataModule: call `setup\(stage\)`"):
        DigitsDataModule().train_dataloader()


def test_text_windows_are_next_byte_targets(tmp_path):
    text = "héllo wörld, " * 50  # non-ASCII: bytes, not characters
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    dm = TextDataModule(path=str(path), block_size=8, batch_size=4, val_fraction=0.1, test_fraction=0.1)
    dm.setup("fit")
    data = text.encode("utf-8")
    x, y = dm.train_set[3]
    assert x.tolist() == list(data[3:11]) and y.tolist() == list(data[4:12])
    n_train = len(data) - 2 * int(len(data) * 0.1)
    assert len(dm.train_set) == n_train - 8  # one window per start position
    vx, vy = next(iter(dm.val_dataloader()))
    assert vx.shape == (4, 8) and torch.equal(vx[:, 1:], vy[:, :-1])


def test_generated_text_is_deterministic_and_exact_length():
    assert generate_text(500, seed=3) == generate_text(500, seed=3)
    assert generate_text(500, seed=3) != generate_text(500, seed=4)
    assert len(generate_text(777)) == 777


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"corpus": "wikitext"}, ValueError, r"corpus must be one of \('python_docs', 'tiny_shakespeare'\), got 'w"),
        ({"path": "no/such.txt"}, FileNotFoundError, r"`path` must be an existing text file, got 'no/such.txt'"),
        ({"synthetic": True, "block_size": 0}, ValueError, r"`block_size` must be a positive integer, got 0"),
        ({"synthetic": True, "block_size": -3}, ValueError, r"`block_size` must be a positive integer, got -3"),
        ({"synthetic": True, "batch_size": 0}, ValueError, r"`batch_size` must be a positive integer, got 0"),
        ({"synthetic": True, "val_fraction": 0.0}, ValueError, r"`val_fraction` must be in \(0, 1\), got 0.0"),
        ({"synthetic": True, "val_fraction": 0.6, "test_fraction": 0.5}, ValueError, r"must sum to less than 1"),
    ],
)
def test_text_rejects_bad_input_naming_it(kwargs, error, message):
    with pytest.raises(error, match=message):
        TextDataModule(**kwargs)


def test_text_too_short_for_block_size_says_which_split(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("abc" * 20)
    dm = TextDataModule(path=str(path), block_size=16)
    with pytest.raises(ValueError, match=r"the val split of .*tiny.txt' has 3 bytes .*block_size \+ 1 = 17"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: DigitsDataModule(val_fraction=0.0), r"`val_fraction` must be in \(0, 1\)"),
        (lambda: DigitsDataModule(test_fraction=1.5), r"`test_fraction` must be in \[0, 1\), got 1.5"),
        (lambda: DigitsDataModule(num_workers=-1), r"`num_workers` must be a non-negative integer, got -1"),
        (lambda: MNISTDataModule(synthetic_size=0), r"`synthetic_size` must be a positive integer, got 0"),
        (lambda: CIFAR10DataModule(val_size=0), r"`val_size` must be a positive integer, got 0"),
    ],
)
def test_image_data_rejects_bad_input_naming_it(build, message):
    with pytest.raises(ValueError, match=message):
        build()
