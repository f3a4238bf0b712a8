"""``AsyncTraining``: asynchronous bounded-staleness training inside your own Accelerate loop.

Accelerate has no plugin point for a new distributed scheme (``DistributedType`` is a closed enum and
``prepare()`` wraps every multi-process model in ``DistributedDataParallel``). So, like
:class:`accelerate.local_sgd.LocalSGD`, this is a helper object next to the :class:`~accelerate.Accelerator`:

* the model is **not** passed to ``accelerator.prepare`` (no DDP, no synchronous all-reduce); every worker starts
  from rank 0's weights;
* the user's optimizer is wrapped so that its ``step()`` offers the worker's gradients to the shared-memory engine,
  which applies them with the user's own update rule to the authoritative parameters and optimizer state,
  measures their staleness and enforces ``max_staleness``; the wrapper is then prepared by Accelerate, so
  ``accelerator.accumulate(model)`` still decides when a step happens;
* the training DataLoader hands each batch to whichever worker asks first (each sample once per epoch, faster
  workers take more batches);
* a forward pre-hook on the model takes the *read* (fresh parameters and their version) before the first
  training forward of each step, so the loop body stays as it is.

::

    accelerator = Accelerator(cpu=True)
    model = Net()
    optimizer = AsyncAdam(model.parameters(), lr=1e-3)
    with AsyncTraining(accelerator, model, max_staleness=4) as training:
        optimizer, loader = training.prepare(optimizer, loader)
        for epoch in range(epochs):
            for x, y in loader:
                with accelerator.accumulate(model):
                    accelerator.backward(loss_fn(model(x), y))
                    optimizer.step()
                    optimizer.zero_grad()
        telemetry = training.finish()
    print(telemetry.summary())
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.data_loader import DataLoaderShard
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.utils import DistributedType
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from torch.utils.data import DataLoader, IterableDataset

from lightning_async._engine.arguments import validate_run_arguments
from lightning_async._engine.base import Telemetry
from lightning_async._engine.bound import (
    AUTO,
    idle_warning,
    resolve_max_staleness,
)
from lightning_async._engine.factory import create_engine, run_token
from lightning_async._engine.restore import restore_engine_state
from lightning_async._engine.shared_memory import ABORT_GRACE_SECONDS, SharedMemoryEngine
from lightning_async._engine_optimizer import EngineOptimizer, ordered_params
from lightning_async._sampler import dynamic_batch_loader_kwargs
from lightning_async._schedulers import GlobalProgressScheduler

#: Accelerate setups the shared-memory engine runs under (one node, parameters on the CPU)
SUPPORTED_DISTRIBUTED_TYPES = (DistributedType.NO, DistributedType.MULTI_CPU)
#: version of the layout of :meth:`AsyncTraining.state_dict`
STATE_FORMAT = 1


class AsyncTraining:
    """Asynchronous bounded-staleness training for a model trained in a user-written Accelerate loop.

    Create it on every process after the ``Accelerator``, with the model *not* passed to
    ``accelerator.prepare``; then pass the optimizer, the training DataLoader and (optionally) a per-step LR
    scheduler through :meth:`prepare`. Use it as a context manager (or call :meth:`close` in a ``finally``) so the
    shared memory is removed whatever happens.

    Args:
        accelerator: the user's ``Accelerator`` (CPU: ``Accelerator(cpu=True)``; launched with ``torchrun`` for
            several processes).
        model: the model to train, on the CPU, not wrapped by ``accelerator.prepare``.
        max_staleness: the bound K on staleness (updates applied by other workers between a worker's read and
            its update), ``"auto"`` (default) for ``2 * (processes - 1)``, or ``None`` for no bound. At most K + 1
            workers compute at once, so with K < processes - 1 some always wait (a warning says so).
        bound_policy: what a worker does when applying its update now would break the bound: ``"accumulate"``
            (keep computing on the same parameters and sum gradients until it may apply; no work lost),
            ``"wait"`` (idle until it may apply) or ``"drop"`` (apply whenever; too-stale updates are discarded
            and counted).
        timeout: seconds any single wait (for the bound, for a peer) may last before a clear error.
        max_consecutive_nonfinite: a worker whose gradients are non-finite this many times in a row stops with
            :class:`~lightning_async.errors.NonFiniteGradientError` (each one is rejected before it reaches the
            optimizer state).
        seed: base seed of the per-epoch permutation of the training data (the same on every worker) when the
            DataLoader shuffles.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        model: torch.nn.Module,
        *,
        max_staleness: int | Literal["auto"] | None = AUTO,
        bound_policy: Literal["accumulate", "wait", "drop"] = "accumulate",
        timeout: float = 300.0,
        max_consecutive_nonfinite: int = 5,
        seed: int = 0,
    ) -> None:
        _validate_accelerator(accelerator)
        _validate_model(model)
        validate_run_arguments(max_staleness, bound_policy, timeout, max_consecutive_nonfinite)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}.")
        self.accelerator = accelerator
        self.model = model
        self.max_staleness = resolve_max_staleness(max_staleness, self.num_workers)
        self.bound_policy = bound_policy
        warning = idle_warning(self.max_staleness, self.num_workers, bound_policy)
        if warning is not None and self.rank == 0:
            warnings.warn(f"lightning_async: {warning}", UserWarning, stacklevel=2)
        self.timeout = float(timeout)
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.seed = seed
        self.engine: SharedMemoryEngine | None = None
        self.optimizer: _EngineBackedOptimizer | None = None
        self.dataloader: _AsyncDataLoader | None = None
        self._params: list[torch.nn.Parameter] = []
        self._samples = 0
        self._has_read = False
        self._hook: Any = None
        self._telemetry: Telemetry | None = None
        self._finished = False
        self._closed = False
        self._previous_sigterm: Any = None
        self._rank = self.rank  # for the exit handler: Accelerate's state may be reset by then

    # ------------------------------------------------------------------ properties
    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def num_workers(self) -> int:
        return self.accelerator.num_processes

    @property
    def version(self) -> int:
        """Updates applied so far by all workers (the global progress of training)."""
        return self._require_engine("version").version

    # ------------------------------------------------------------------ prepare
    def prepare(self, *objects: Any) -> Any:
        """Set up asynchronous training; call once, on every process, with the optimizer first.

        Accepts, in any order after the optimizer:

        * exactly one ``torch.optim.Optimizer`` over the model's parameters, not yet prepared by Accelerate:
          returned as an ``AcceleratedOptimizer`` whose ``step()`` offers the gradients to the engine;
        * at most one training ``DataLoader`` (map-style dataset, ``batch_size`` set): returned as a DataLoader
          whose batches go to whichever worker asks first, each sample once per epoch;
        * at most one LR scheduler of the optimizer: returned so that it follows the global count of applied
          updates (call its ``step()`` after ``optimizer.step()`` as usual).

        Evaluation DataLoaders are not passed here: use ``accelerator.prepare`` (static split) or plain loaders.
        Returns the prepared objects in the order given (a single object if one was given).
        """
        if self.engine is not None or self._closed:
            raise RuntimeError(
                "AsyncTraining.prepare() was already called; it sets up the shared engine once. Create a new "
                "AsyncTraining for another run."
            )
        optimizers = [o for o in objects if isinstance(o, torch.optim.Optimizer)]
        loaders = [o for o in objects if isinstance(o, DataLoader)]
        schedulers = [o for o in objects if isinstance(o, (LRScheduler, ReduceLROnPlateau))]
        for o in objects:
            if isinstance(o, torch.nn.Module):
                raise TypeError(
                    "AsyncTraining.prepare() got the model: pass it to AsyncTraining(accelerator, model) instead, and "
                    "do not prepare it with the accelerator (that would wrap it in DistributedDataParallel)."
                )
            if isinstance(o, AcceleratedOptimizer):
                raise TypeError(
                    "AsyncTraining.prepare() got an optimizer already prepared by accelerator.prepare(). Pass the "
                    "plain torch optimizer to AsyncTraining.prepare() instead; it prepares it itself."
                )
            if not isinstance(o, (torch.optim.Optimizer, DataLoader, LRScheduler, ReduceLROnPlateau)):
                raise TypeError(
                    f"AsyncTraining.prepare() accepts an optimizer, a training DataLoader and an LR scheduler, got "
                    f"{type(o).__name__}. Prepare other objects with accelerator.prepare()."
                )
        if len(optimizers) != 1:
            raise ValueError(
                f"AsyncTraining.prepare() needs exactly one optimizer, got {len(optimizers)}. Put all parameters "
                "in parameter groups of one optimizer."
            )
        if len(loaders) > 1:
            raise ValueError(
                f"AsyncTraining.prepare() takes at most one (training) DataLoader, got {len(loaders)}. Prepare "
                "evaluation DataLoaders with accelerator.prepare() or use them as they are."
            )
        if len(schedulers) > 1:
            raise ValueError(f"AsyncTraining.prepare() takes at most one LR scheduler, got {len(schedulers)}.")
        optimizer = optimizers[0]
        self._validate_optimizer(optimizer)
        for scheduler in schedulers:
            if getattr(scheduler, "optimizer", None) is not optimizer:
                raise ValueError("the LR scheduler passed to AsyncTraining.prepare() must belong to its optimizer.")
        if loaders:
            _validate_dataloader(loaders[0])

        self._params = ordered_params(optimizer)
        try:
            self._broadcast_initial_weights()
            self.engine = self._create_engine(optimizer)
            self._install_cleanup()
            self.engine.start()
            self.engine.refresh(self._params)
            self._hook = self.model.register_forward_pre_hook(self._before_forward)
            wrapper = _EngineBackedOptimizer(optimizer, self)
            # device_placement=False: Accelerate would round-trip the state dict, which un-shares the engine's state
            self.optimizer = wrapper
            prepared_optimizer = self.accelerator.prepare_optimizer(wrapper, device_placement=False)
        except BaseException:
            self.close()
            raise
        out: list[Any] = []
        for o in objects:
            if o is optimizer:
                out.append(prepared_optimizer)
            elif isinstance(o, DataLoader):
                self.dataloader = self._make_dataloader(o)
                out.append(self.dataloader)
            else:
                out.append(GlobalProgressScheduler(o, self.engine) if isinstance(o, LRScheduler) else o)
        return out[0] if len(out) == 1 else tuple(out)

    def _validate_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        if isinstance(optimizer, torch.optim.LBFGS):
            raise ValueError(
                "torch.optim.LBFGS re-evaluates the loss inside step(); an asynchronous engine applies a gradient "
                "computed earlier. Use a first-order optimizer (e.g. lightning_async.optim.AsyncAdam)."
            )
        if isinstance(optimizer, EngineOptimizer):
            raise TypeError("the optimizer is already engine-backed; pass the user's plain optimizer.")
        model_params = {id(p) for p in self.model.parameters()}
        for g, group in enumerate(optimizer.param_groups):
            for p in group["params"]:
                if id(p) not in model_params:
                    raise ValueError(
                        f"the optimizer's parameter group {g} holds a tensor of shape {tuple(p.shape)} that is not a "
                        "parameter of the model given to AsyncTraining. Build the optimizer from "
                        "model.parameters() of that model."
                    )
        if not ordered_params(optimizer):
            raise ValueError("the optimizer has no parameters. Build it from model.parameters().")

    def _broadcast_initial_weights(self) -> None:
        if self.num_workers > 1 and dist.is_available() and dist.is_initialized():
            with torch.no_grad():
                for tensor in [*self.model.parameters(), *self.model.buffers()]:
                    dist.broadcast(tensor.data, src=0)

    def _create_engine(self, optimizer: torch.optim.Optimizer) -> SharedMemoryEngine:
        distributed = self.num_workers > 1 and dist.is_available() and dist.is_initialized()
        if self.num_workers > 1 and not distributed:
            raise RuntimeError(
                f"the accelerator reports {self.num_workers} processes but torch.distributed is not initialized."
            )
        engine = create_engine(
            "shared_memory", run_token(self.rank, clean_shared_memory=True), worker=self.rank,
            num_workers=self.num_workers, params=self._params,
            optimizer=optimizer, max_staleness=self.max_staleness, bound_policy=self.bound_policy,
            timeout=self.timeout, max_consecutive_nonfinite=self.max_consecutive_nonfinite, barrier=self._barrier,
        )
        assert isinstance(engine, SharedMemoryEngine)
        return engine

    def _make_dataloader(self, dataloader: DataLoader) -> _AsyncDataLoader:
        assert self.engine is not None and dataloader.batch_size is not None
        kwargs = dynamic_batch_loader_kwargs(dataloader, self.engine, seed_offset=self.seed)
        device = self.accelerator.device if self.accelerator.device_placement else None
        # rng_types=None: Accelerate's per-epoch RNG synchronisation is a collective; workers start epochs apart
        return _AsyncDataLoader(self, dataloader.dataset, device=device, rng_types=None, **kwargs)

    # ------------------------------------------------------------------ the worker's step
    def _before_forward(self, module: torch.nn.Module, args: Any) -> None:
        # a training forward (train mode, autograd on) needs a read; evaluation forwards do not take one
        if self.engine is None or self._finished or not module.training or not torch.is_grad_enabled():
            return
        self.engine.begin_step(self._params)
        self._has_read = True

    def _count_batch(self, batch: Any) -> None:
        self._samples += _batch_size(batch)

    def _take_samples(self) -> int:
        samples, self._samples = self._samples, 0
        return max(samples, 1)

    def end_epoch(self) -> None:
        """Apply what this worker has deferred, release its read and load the current parameters into the model.

        Called automatically when the prepared DataLoader is exhausted; call it yourself when you leave the epoch
        early (``break``) and before evaluating mid-epoch.
        """
        engine = self._require_engine("end_epoch")
        if self._finished:
            return
        engine.end_epoch(self._params)
        self._has_read = False

    def finish(self) -> Telemetry:
        """End training on this worker: flush, wait (bounded) for the other workers to finish, load the final
        parameters into the model, and remove the shared memory. Returns the run's :class:`Telemetry`.

        Call on every process after the last epoch. Idempotent.
        """
        engine = self._require_engine("finish")
        if not self._finished:
            self._finished = True
            engine.finish(self._params)
            self._has_read = False
            if not engine.wait_for_workers(self.timeout):
                warnings.warn(
                    f"lightning_async: worker {self.rank} finished but some workers were still training after "
                    f"{self.timeout}s ({engine.describe_peers()}); the telemetry may not include their last updates.",
                    stacklevel=2,
                )
            engine.refresh(self._params)
            self._telemetry = engine.telemetry()
        self.close()
        assert self._telemetry is not None
        return self._telemetry

    def telemetry(self) -> Telemetry:
        """Counters, staleness histogram and per-worker throughput over all workers (live until :meth:`finish`)."""
        if self._telemetry is not None:
            return self._telemetry
        return self._require_engine("telemetry").telemetry()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """A consistent snapshot: model weights, optimizer state, versions, counters and the batch cursor.

        Taken without stopping the other workers (admissions pause for the copy). Any process may call it, alone;
        the content loads with ``torch.load(path, weights_only=True)``.
        """
        engine = self._require_engine("state_dict")
        snapshot = engine.snapshot()
        model_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        by_id = {id(p): name for name, p in self.model.named_parameters(remove_duplicate=False)}
        for p, value in zip(self._params, snapshot["params"]):
            name = by_id.get(id(p))
            if name in model_state:
                model_state[name] = value
        return {
            "format": STATE_FORMAT,
            "model": model_state,
            "optimizer": snapshot["optimizer"],
            "engine": snapshot["engine"],
            "epoch": int(self.dataloader.iteration) if self.dataloader is not None else 0,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`. Collective: call on every process, between epochs (or before training)."""
        engine = self._require_engine("load_state_dict")
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(
                "AsyncTraining.load_state_dict() expects a dict saved from AsyncTraining.state_dict() "
                f"(format {STATE_FORMAT}), got {_describe_state(state)}."
            )
        saved_workers = state["engine"].get("num_workers")
        if saved_workers is not None and saved_workers != self.num_workers:
            warnings.warn(
                f"lightning_async: the checkpoint was saved with {saved_workers} workers and resumes with "
                f"{self.num_workers}; the batch cursor of a partly done epoch is kept.",
                stacklevel=2,
            )
        engine.end_epoch(self._params)  # release this worker's read before the others stop at the barrier
        self._has_read = False
        self._barrier()
        self.model.load_state_dict(state["model"])
        self._load_optimizer_state(state["optimizer"], engine_state=state["engine"], barrier_first=False)
        if self.dataloader is not None:
            self.dataloader.set_epoch(int(state.get("epoch", 0)))

    def _load_optimizer_state(
        self, optimizer_state: dict[str, Any], engine_state: dict[str, Any] | None = None, barrier_first: bool = True
    ) -> None:
        engine = self._require_engine("load_state_dict")
        assert self.optimizer is not None
        if barrier_first:
            engine.end_epoch(self._params)
            self._has_read = False
            self._barrier()
        restore_engine_state(
            engine, self.optimizer.optimizer, optimizer_state, engine_state, is_creator=self.rank == 0,
            barrier=self._barrier,
        )
        engine.refresh(self._params)
        self._barrier()  # nobody trains (and writes) before every worker has attached

    def _barrier(self) -> None:
        if self.num_workers > 1:
            self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ cleanup
    def close(self) -> None:
        """Release the engine and remove the shared memory. Idempotent; called by :meth:`finish`.

        Closing before :meth:`finish` (an error in the training loop, an early ``return``) stops the run: every
        other worker raises :class:`~lightning_async.RunAbortedError` naming this worker at its next step or wait,
        instead of training on without it or waiting for it until ``timeout``.
        """
        self._close(None)

    def _close(self, failure: str | None) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._close_at_exit)  # a closed run needs nothing at exit (nor to be kept alive until then)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.optimizer is not None:
            self.optimizer._closed = True
        engine = self.engine
        if engine is not None and not self._finished:
            self._abort(engine, failure or f"AsyncTraining.close() on worker {self._rank} before finish()")
        elif engine is not None:
            engine.leave()  # the last worker out removes the run's directory (peers' mappings survive the unlink)
        self._restore_sigterm()

    def _abort(self, engine: SharedMemoryEngine, reason: str) -> None:
        """Tell the peers why this worker stops; the coordinator stays in the run for a short grace period (the peers
        read the reason in its shared memory), then leaves: whoever leaves last removes the directory."""
        with contextlib.suppress(Exception):
            engine.abort(reason)
        if self._rank == 0:
            with contextlib.suppress(Exception):
                engine.wait_for_workers(ABORT_GRACE_SECONDS, raise_on_failure=False)
        with contextlib.suppress(Exception):
            engine.leave()

    def _close_at_exit(self) -> None:
        # the interpreter exits (an uncaught error, or a script that never called finish()): stop the run with a reason
        if not self._closed:
            self._close(f"worker {self._rank}'s process exited before AsyncTraining.finish() (an uncaught error?)")

    def _install_cleanup(self) -> None:
        atexit.register(self._close_at_exit)
        # torchrun stops the surviving workers with SIGTERM when one fails; turn it into SystemExit so that
        # `with` blocks, `finally` and atexit run and the shared memory is removed (only if nobody handles SIGTERM)
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self._previous_sigterm = signal.SIG_DFL
            signal.signal(signal.SIGTERM, _exit_on_sigterm)

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is _exit_on_sigterm:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def __enter__(self) -> AsyncTraining:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self._close(None if exc is None else _describe_exit(exc))

    def _require_engine(self, what: str) -> SharedMemoryEngine:
        if self.engine is None:
            raise RuntimeError(
                f"AsyncTraining.{what} needs the engine: call AsyncTraining.prepare(optimizer, ...) first."
            )
        if self._closed and what not in ("telemetry", "finish", "version"):
            raise RuntimeError(f"AsyncTraining.{what} was called after finish()/close(); the engine is released.")
        return self.engine

    def __repr__(self) -> str:
        return (
            f"AsyncTraining(worker {self.rank} of {self.num_workers}, max_staleness={self.max_staleness}, "
            f"bound_policy={self.bound_policy!r})"
        )


class _EngineBackedOptimizer(EngineOptimizer):
    """The user's optimizer with ``step()`` routed to the engine; Accelerate wraps this in ``AcceleratedOptimizer``."""

    def __init__(self, optimizer: torch.optim.Optimizer, training: AsyncTraining) -> None:
        assert training.engine is not None
        super().__init__(optimizer, training.engine, training._params, training._take_samples)
        self._training = training
        self._closed = False

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        training = self._training
        if self._closed:
            raise RuntimeError("optimizer.step() after AsyncTraining.finish()/close(): the engine is released.")
        if not training._has_read:
            raise RuntimeError(
                "optimizer.step() without a training forward since the last step: the gradients belong to no read. "
                "Call the model itself (model(x), in model.train() mode with autograd enabled) between steps; it "
                "takes the read."
            )
        loss = super().step(closure)
        if self.last_verdict != "deferred":
            training._has_read = False
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        # a deferred update may still reference this step's gradient tensors: never zero them in place
        self.optimizer.zero_grad(set_to_none=True if self.last_verdict == "deferred" else set_to_none)

    def state_dict(self) -> dict[str, Any]:
        if self._closed:
            return self.optimizer.state_dict()
        return self.engine.snapshot()["optimizer"]  # type: ignore[attr-defined]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # collective (accelerator.load_state calls it on every process): the loaded state must be shared again
        self._training._load_optimizer_state(state_dict)

    def __repr__(self) -> str:
        return f"AsyncTraining engine-backed {self.optimizer!r}"


class _AsyncDataLoader(DataLoaderShard):
    """Accelerate's DataLoaderShard over batches claimed from the engine's shared cursor.

    Counts the samples of each batch it yields (for the engine's counters) and ends the epoch on the engine when
    it is exhausted. No ``len()``: a worker's share of an epoch is only known when the epoch ends.
    """

    def __init__(self, training: AsyncTraining, dataset: Any, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self._training = training

    def __iter__(self) -> Iterator[Any]:
        for batch in super().__iter__():
            self._training._count_batch(batch)
            yield batch
        if not self._training._finished and not self._training._closed:
            self._training.end_epoch()


# ---------------------------------------------------------------------- validation
def _validate_accelerator(accelerator: Any) -> None:
    if not isinstance(accelerator, Accelerator):
        raise TypeError(f"accelerator must be an accelerate.Accelerator, got {type(accelerator).__name__}.")
    kind = accelerator.distributed_type
    if kind not in SUPPORTED_DISTRIBUTED_TYPES:
        raise ValueError(
            f"AsyncTraining runs the shared_memory engine (one node, parameters in /dev/shm on the CPU), but the "
            f"accelerator's distributed_type is {kind}. Use Accelerator(cpu=True) launched with torchrun "
            "(torchrun --standalone --nproc-per-node N script.py)."
        )
    if accelerator.device.type != "cpu":
        raise ValueError(
            f"AsyncTraining's shared_memory engine keeps the parameters in CPU shared memory, but the accelerator's "
            f"device is {accelerator.device}. Use Accelerator(cpu=True)."
        )
    if getattr(accelerator, "scaler", None) is not None:
        raise ValueError(
            f"Accelerator(mixed_precision={accelerator.mixed_precision!r}) uses a gradient scaler that skips optimizer "
            "steps on overflow per worker. Use mixed_precision='bf16' or 'no' with AsyncTraining."
        )
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    if accelerator.num_processes > local:
        raise ValueError(
            f"AsyncTraining's shared_memory engine runs on one node, but there are {accelerator.num_processes} "
            f"processes and {local} on this node. Launch all processes on one node (torchrun --nnodes 1)."
        )


def _validate_model(model: Any) -> None:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) or type(model).__name__ in (
        "FullyShardedDataParallel",
        "DeepSpeedEngine",
    ):
        raise ValueError(
            f"model is wrapped in {type(model).__name__} (did accelerator.prepare() see it?). AsyncTraining replaces "
            "the synchronous all-reduce: pass the plain model and do not prepare it with the accelerator."
        )
    params = list(model.parameters())
    if not any(p.requires_grad for p in params):
        raise ValueError("model has no trainable parameters (requires_grad=True); there is nothing to train.")
    for name, p in model.named_parameters():
        if p.device.type != "cpu":
            raise ValueError(
                f"model parameter {name!r} is on {p.device}; AsyncTraining's shared_memory engine needs the model on "
                "the CPU. Keep it there (model.to('cpu')) and use Accelerator(cpu=True)."
            )


def _validate_dataloader(dataloader: DataLoader) -> None:
    if isinstance(dataloader.dataset, IterableDataset):
        raise ValueError(
            "the training DataLoader reads an IterableDataset; dynamic batches need a map-style dataset (with "
            "len() and indexing) so that each sample is used once per epoch. Use a map-style dataset, or prepare this "
            "DataLoader with accelerator.prepare() instead (static split)."
        )
    if dataloader.batch_size is None:
        raise ValueError(
            "the training DataLoader uses a custom batch_sampler (batch_size=None); dynamic batches need "
            "DataLoader(dataset, batch_size=..., shuffle=...). Pass batch_size instead of batch_sampler."
        )
    if type(dataloader).__name__ in ("DataLoaderShard", "DataLoaderDispatcher", "_AsyncDataLoader"):
        raise ValueError(
            "the training DataLoader was already prepared (by accelerator.prepare or AsyncTraining.prepare); pass "
            "the plain torch DataLoader."
        )


# ---------------------------------------------------------------------- helpers
def _describe_state(state: Any) -> str:
    if isinstance(state, dict):
        return f"a dict with format {state.get('format')!r} and keys {sorted(map(str, state))}"
    return type(state).__name__


def _describe_exit(exc: BaseException) -> str:
    if isinstance(exc, SystemExit) and exc.code == 128 + signal.SIGTERM:
        return "the worker received SIGTERM"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_size(batch[0])
    if isinstance(batch, dict) and batch:
        return _batch_size(next(iter(batch.values())))
    return 1


__all__ = ["AsyncTraining", "STATE_FORMAT", "SUPPORTED_DISTRIBUTED_TYPES"]
