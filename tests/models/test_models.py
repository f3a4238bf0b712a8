"""Recipe models: shapes, input validation, causality, optimizer injection, and that they learn."""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import pytest
import torch

from lightning_async.data import DigitsDataModule, TextDataModule
from lightning_async.models import CharGPT, CNNClassifier, MLPClassifier, ResNet18Classifier


@pytest.mark.parametrize(
    ("model", "batch", "out_shape"),
    [
        (lambda: MLPClassifier(hidden_dims=[16]), torch.randn(3, 64), (3, 10)),
        (lambda: MLPClassifier(hidden_dims=[]), torch.randn(3, 64), (3, 10)),
        (lambda: CNNClassifier(channels=4, hidden_dim=8), torch.randn(3, 1, 28, 28), (3, 10)),
        (lambda: CNNClassifier(in_channels=3, image_size=32, channels=4), torch.randn(3, 3, 32, 32), (3, 10)),
        (lambda: ResNet18Classifier(width=4), torch.randn(3, 3, 32, 32), (3, 10)),
        (lambda: CharGPT(block_size=8, n_layer=1, n_head=2, n_embd=8), torch.randint(0, 256, (3, 8)), (3, 8, 256)),
    ],
)
def test_model_forward_shape_and_backward(model, batch, out_shape):
    module = model()
    logits = module(batch)
    assert tuple(logits.shape) == out_shape
    logits.float().sum().backward()
    assert all(p.grad is not None for p in module.parameters())


def test_resnet18_width64_has_resnet18_size():
    params = sum(p.numel() for p in ResNet18Classifier().parameters())
    assert 11_100_000 < params < 11_200_000  # CIFAR ResNet-18: 11.17M


def test_gpt_is_causal():
    torch.manual_seed(0)
    model = CharGPT(block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0).eval()
    x = torch.randint(0, 256, (1, 8))
    y = x.clone()
    y[0, 5:] = (y[0, 5:] + 1) % 256
    assert torch.allclose(model(x)[:, :5], model(y)[:, :5], atol=1e-6)
    assert not torch.allclose(model(x)[:, 5:], model(y)[:, 5:])


def test_gpt_generate_appends_tokens():
    model = CharGPT(block_size=4, n_layer=1, n_head=1, n_embd=8).eval()
    out = model.generate(torch.zeros(2, 3, dtype=torch.long), max_new_tokens=5)
    assert out.shape == (2, 8)
    with pytest.raises(ValueError, match="`temperature` must be positive, got 0"):
        model.generate(torch.zeros(1, 1, dtype=torch.long), 1, temperature=0)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: MLPClassifier(input_dim=0), r"`input_dim` must be a positive integer, got 0"),
        (lambda: MLPClassifier(hidden_dims=[8, -1]), r"`hidden_dims\[1\]` must be a positive integer, got -1"),
        (lambda: MLPClassifier(dropout=1.0), r"`dropout` must be in \[0, 1\), got 1.0"),
        (lambda: MLPClassifier(num_classes=0), r"`num_classes` must be a positive integer, got 0"),
        (lambda: MLPClassifier(scheduler_interval="batch"), r"`scheduler_interval` must be 'step' or 'epoch'"),
        (lambda: CNNClassifier(image_size=30), r"`image_size` must be divisible by 4 .*got 30"),
        (lambda: ResNet18Classifier(width=0), r"`width` must be a positive integer, got 0"),
        (lambda: CharGPT(block_size=0), r"`block_size` must be a positive integer, got 0"),
        (lambda: CharGPT(n_embd=30, n_head=4), r"`n_embd` must be divisible by `n_head`, got n_embd=30 and n_head=4"),
    ],
)
def test_model_rejects_bad_input_naming_it(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_gpt_input_longer_than_block_size_is_rejected():
    model = CharGPT(block_size=4, n_layer=1, n_head=1, n_embd=8)
    with pytest.raises(ValueError, match=r"Input length 5 exceeds the model's `block_size` \(4\)"):
        model(torch.zeros(1, 5, dtype=torch.long))


def test_gpt_setup_rejects_data_block_size_larger_than_model(tmp_path):
    model = CharGPT(block_size=8, n_layer=1, n_head=1, n_embd=8)
    data = TextDataModule(synthetic=True, synthetic_size=2000, block_size=16)
    trainer = pl.Trainer(fast_dev_run=True, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match=r"`data.block_size` \(16\) exceeds `model.block_size` \(8\)"):
        trainer.fit(model, datamodule=data)


def test_optimizer_and_scheduler_are_injected():
    model = MLPClassifier(
        hidden_dims=[4],
        optimizer=partial(torch.optim.SGD, lr=0.5),
        scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=3),
        scheduler_interval="step",
    )
    config = model.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.SGD)
    assert config["optimizer"].param_groups[0]["lr"] == 0.5
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert config["lr_scheduler"]["interval"] == "step"
    assert isinstance(MLPClassifier().configure_optimizers(), torch.optim.Adam)  # the default


def test_mlp_learns_digits_and_logs_metrics(tmp_path):
    pl.seed_everything(0)
    model = MLPClassifier(hidden_dims=[64], optimizer=partial(torch.optim.Adam, lr=3e-3))
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    data = DigitsDataModule()
    trainer.fit(model, datamodule=data)
    metrics = trainer.callback_metrics
    assert {"train/loss", "val/loss", "val/acc"} <= set(metrics)
    assert metrics["val/acc"] > 0.85
    (test,) = trainer.test(model, datamodule=data, verbose=False)
    assert test["test/acc"] > 0.85 and "test/loss" in test
