"""The shared-cursor loader's next batch is claimed as a step ends, and Lightning's epoch logic still holds."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loops.fetchers import _PrefetchDataFetcher
from torch.utils.data import DataLoader, TensorDataset

from lightning_async import AsyncAdaptiveStrategy
from lightning_async._fetcher import JustInTimeFetcher

BATCHES = 6  # per epoch: 48 samples in batches of 8


class Net(L.LightningModule):
    def __init__(self, skip_odd_steps: bool = False) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)
        self.skip_odd_steps = skip_odd_steps

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        if self.skip_odd_steps and batch_idx % 2 == 1:
            optimizer_closure()  # the gradient is computed, but this step updates nothing
            return
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.01)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


class Probe(Callback):
    """Counts the cursor's claims at each point of a step, and what Lightning believes about the epoch's end."""

    def __init__(self) -> None:
        self.claims = 0
        self.at_start: list[int] = []
        self.before_update: list[int] = []
        self.at_end: list[int] = []
        self.last_batch: list[bool] = []
        self.validations = 0
        self.fetchers: set[str] = set()

    def on_train_start(self, trainer, pl_module):
        engine = trainer.strategy.engine
        claim = engine.next_batch

        def counted(epoch, num_batches):
            self.claims += 1
            return claim(epoch, num_batches)

        engine.next_batch = counted  # the sampler calls its cursor's next_batch: count every claim from now on

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.at_start.append(self.claims)
        self.fetchers.add(type(trainer.fit_loop._data_fetcher).__name__)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before_update.append(self.claims)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.at_end.append(self.claims)
        self.last_batch.append(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validations += 1


def _fit(tmp_path, model: Net, **trainer_kwargs) -> tuple[Probe, L.Trainer]:
    torch.manual_seed(0)
    x = torch.randn(8 * BATCHES, 4)
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8, shuffle=True)
    probe = Probe()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
        strategy=AsyncAdaptiveStrategy(max_staleness=2), callbacks=[probe], num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    trainer.fit(model, data, DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8))
    return probe, trainer


def test_the_next_batch_is_claimed_when_the_step_ends_and_each_epoch_ends_as_in_lightning(tmp_path):
    model = Net()
    probe, trainer = _fit(tmp_path, model)
    assert probe.fetchers == {JustInTimeFetcher.__name__}
    steps = 3 * BATCHES
    assert len(probe.at_start) == steps
    # nothing is claimed while the gradient is computed; the next batch (or the epoch's end) is claimed after it
    assert probe.before_update == probe.at_start
    assert [end - start for start, end in zip(probe.at_start, probe.at_end)] == [1] * steps
    # the step that found the cursor exhausted is the epoch's last: Lightning validates after it, then moves on
    assert probe.last_batch == ([False] * (BATCHES - 1) + [True]) * 3
    assert probe.validations == 3
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(0.01 * 0.5**3)  # the epoch-interval scheduler stepped once per epoch


def test_an_epoch_ending_on_a_step_without_update_is_still_found_by_the_batch_end_hook(tmp_path):
    # 6 batches per epoch: the last (batch_idx 5) takes no optimizer step, so the strategy never sees it end
    probe, trainer = _fit(tmp_path, Net(skip_odd_steps=True))
    assert probe.last_batch == ([False] * (BATCHES - 1) + [True]) * 3
    assert probe.validations == 3
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**3)


def test_gradient_accumulation_keeps_lightnings_own_look_ahead(tmp_path):
    # with accumulation, the step at an accumulation boundary must know at its start whether it is the last
    probe, trainer = _fit(tmp_path, Net(), accumulate_grad_batches=4)
    assert probe.fetchers == {_PrefetchDataFetcher.__name__}
    assert probe.last_batch == ([False] * (BATCHES - 1) + [True]) * 3
    assert probe.validations == 3
