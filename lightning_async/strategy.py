"""``AsyncAdaptiveStrategy``: asynchronous bounded-staleness training for an unchanged LightningModule.

Lightning glue only. Launching, process groups, ranks and metric reduction come from :class:`DDPStrategy`;
the model is *not* wrapped in ``DistributedDataParallel`` (there is no synchronous all-reduce). Instead the
user's optimizer is wrapped in a proxy whose ``step``
offers the worker's gradients to an engine, which applies them to the authoritative parameters with the user's
own update rule, measures their staleness and enforces ``max_staleness``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import timedelta
from functools import partial
from typing import Any, Literal

import torch
import torch.distributed as dist
import torchmetrics
from lightning.fabric.plugins import CheckpointIO, ClusterEnvironment
from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
from lightning.fabric.utilities.distributed import _init_dist_connection
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.accelerators import Accelerator, CPUAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.overrides.distributed import _sync_module_states
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.trainer.connectors.signal_connector import _get_sigkill_signal
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, IterableDataset
from typing_extensions import override

from lightning_async._engine.arguments import validate_run_arguments
from lightning_async._engine.base import Engine, Telemetry
from lightning_async._engine.bound import (
    AUTO,
    BOUND_POLICIES,
    idle_warning,
    resolve_max_staleness,
)
from lightning_async._engine.factory import ENGINES, create_engine, parameter_server_namespace, run_token
from lightning_async._engine.parameter_server import ParameterServerEngine
from lightning_async._engine.restore import restore_engine_state
from lightning_async._engine.shared_memory import ABORT_GRACE_SECONDS, SharedMemoryEngine
from lightning_async._engine_optimizer import EngineOptimizer, ordered_params
from lightning_async._fetcher import fetch_ahead, use_just_in_time_fetcher
from lightning_async._global_step import follow_global_progress, use_global_step_logging
from lightning_async._live_collectives import LiveCollectives
from lightning_async._progress import shared_cursor_sampler, show_estimated_length
from lightning_async._rendezvous import create_store, keep_gloo_on_loopback
from lightning_async._sampler import dynamic_batch_loader_kwargs
from lightning_async._schedulers import GlobalProgressScheduler
from lightning_async.errors import RunAbortedError

#: precisions whose gradients reach ``optimizer.step`` unscaled and whose optimizer step is never skipped
SUPPORTED_PRECISIONS = ("32-true", "32", "64-true", "64", "bf16-mixed", "bf16-true", "bf16")
_STATE_KEY = "lightning_async"


#: the least time the start-up rendezvous waits for every worker process to join, whatever ``timeout`` says
STARTUP_TIMEOUT_SECONDS = 300.0

class AsyncAdaptiveStrategy(DDPStrategy):
    """Train on N worker processes that apply their gradients asynchronously, with bounded staleness.

    Each worker computes gradients on its own copy of the parameters and applies them, through the user's
    optimizer, to the authoritative parameters and optimizer state held by the engine, without waiting for the
    other workers. The *staleness* of an update (updates applied by others since the worker read its parameters)
    never exceeds ``max_staleness``.

    Args:
        max_staleness: the bound K on staleness, ``"auto"`` (default) for ``2 * (workers - 1)`` (``2 * workers``
            when the parameter-server engine may overlap pushes), or ``None`` for no bound. At most K + 1 workers
            compute at once, so with K < workers - 1 some always wait (a warning says so); ``"auto"`` leaves room
            for per-step jitter, see docs/concepts.md.
        bound_policy: what a worker does when applying its update now would break the bound:
            ``"accumulate"`` (default: keep computing on the same parameters and sum gradients until it may
            apply; no work is lost and no worker idles), ``"wait"`` (idle until it may apply), or ``"drop"``
            (apply whenever; updates that arrive too stale are discarded and counted).
        engine: where the authoritative state lives. ``"shared_memory"`` (default): one node, parameters and
            optimizer state in shared memory, no server. ``"parameter_server"``: any number of nodes; parameter
            blocks and their optimizer state are owned by the ranks, over ``torch.distributed`` point-to-point.
            By default every rank owns blocks, so the failure of any rank stops the run with an error naming it;
            resume with ``Trainer.fit(..., ckpt_path="last")`` (see docs/multinode.md).
        timeout: seconds any single wait (for a peer, for the bound, for a collective) may last before the run
            stops with an error naming the worker it waited for.
        max_consecutive_nonfinite: a worker whose gradients are non-finite this many times in a row stops the run
            (each one is rejected before it reaches the optimizer state).
        dynamic_batches: faster workers take more batches from a shared cursor (each sample still once per
            epoch). ``False`` keeps Lightning's static ``DistributedSampler`` split.
        lock_free: let workers' writes overlap (pure Hogwild!, the paper's model). Off by default: writes are
            serialised by a lock held only for the optimizer step, because overlapping read-modify-writes of
            adaptive state (Adam's second moment) can lose an update and blow the step up. Reads never lock.
        overlap: ``parameter_server`` only: send each update to the remote owners and compute the next gradient
            while it travels, instead of waiting for the round trip (each such update is then one version staler);
            adaptive per owner, only while the round trip is a large share of the step and the other workers'
            updates interleave with this worker's. Otherwise the reply is taken as the next step starts (no
            staleness added). ``None`` (default): starts without overlap and turns it on per owner once the measured
            round trip is over a third of the step (a slow link, a small model), unless ``bound_policy="wait"`` or
            ``max_staleness < 2`` (then never). ``True``: overlap from the first step (same rule to stop).
        on_worker_failure: ``parameter_server`` only. ``"stop"`` (default): a dead or hung worker stops the run
            within ``timeout`` with an error naming its rank. ``"continue"``: a dead or hung *pure worker* (a rank
            outside ``owner_ranks``) is dropped, its in-flight update counted as ``lost``, and the others train on;
            the collectives of the rest of the fit (metric sync, checkpoints) then run among the live ranks. Needs
            ``owner_ranks`` without the ranks that may fail.
        owner_ranks: ``parameter_server`` only: the ranks that own parameter blocks and their optimizer state
            (default: every rank). Must include rank 0. The death of an owner always stops the run.
        print_summary: print the staleness and throughput summary at the end of fit (rank 0).
        start_method: how Lightning launches the workers (``"popen"``, ``"spawn"``, ``"fork"``,
            ``"forkserver"``), as for DDP.
        process_group_backend: the backend of the process group used for launching and metric reduction
            (default: ``gloo`` on CPU).
    """

    strategy_name = "async_adaptive"

    def __init__(
        self,
        max_staleness: int | Literal["auto"] | None = AUTO,
        bound_policy: Literal["accumulate", "wait", "drop"] = "accumulate",
        engine: Literal["shared_memory", "parameter_server"] = "shared_memory",
        timeout: float = 300.0,
        max_consecutive_nonfinite: int = 5,
        dynamic_batches: bool = True,
        lock_free: bool = False,
        overlap: bool | None = None,
        on_worker_failure: Literal["stop", "continue"] = "stop",
        owner_ranks: list[int] | None = None,
        print_summary: bool = True,
        start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen",
        process_group_backend: str | None = None,
        accelerator: Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        checkpoint_io: CheckpointIO | None = None,
        precision_plugin: Precision | None = None,
    ) -> None:
        validate_run_arguments(max_staleness, bound_policy, timeout, max_consecutive_nonfinite)
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}.")
        if overlap is not None and engine != "parameter_server":
            raise ValueError(
                f"overlap={overlap!r} applies to engine='parameter_server' only (engine={engine!r} has no round trip "
                "to overlap). Remove overlap, or set engine='parameter_server'."
            )
        if overlap and bound_policy == "wait":
            raise ValueError("overlap=True does not combine with bound_policy='wait' (a waiting worker holding the "
                             "read for its next gradient can wait for a peer waiting for it). Use "
                             "bound_policy='accumulate', or overlap=False.")
        if overlap and isinstance(max_staleness, int) and max_staleness < 1:
            raise ValueError(f"overlap=True needs max_staleness >= 1, got {max_staleness}: each overlapped update is "
                             "at least one version stale. Raise max_staleness, or set overlap=False.")
        if on_worker_failure not in ("stop", "continue"):
            raise ValueError(f"on_worker_failure must be 'stop' or 'continue', got {on_worker_failure!r}.")
        if (on_worker_failure == "continue" or owner_ranks is not None) and engine != "parameter_server":
            raise ValueError(
                "on_worker_failure='continue' and owner_ranks apply to engine='parameter_server' (the shared-memory "
                "engine keeps all state in one node's memory). Set engine='parameter_server'."
            )
        if owner_ranks is not None and (
            not isinstance(owner_ranks, (list, tuple)) or not owner_ranks
            or any(isinstance(r, bool) or not isinstance(r, int) or r < 0 for r in owner_ranks) or 0 not in owner_ranks
        ):
            raise ValueError(
                f"owner_ranks must be a non-empty list of ranks that includes 0 (rank 0 hosts the store and the "
                f"checkpoints), got {owner_ranks!r}. Example: owner_ranks=[0]."
            )
        if on_worker_failure == "continue" and owner_ranks is None:
            raise ValueError(
                "on_worker_failure='continue' needs owner_ranks: by default every rank owns parameter blocks, and the "
                "death of an owner loses state, so nothing could continue. Set owner_ranks to the ranks that serve the "
                "parameters (e.g. owner_ranks=[0]); the other ranks may then fail without stopping the run."
            )
        super().__init__(
            accelerator=accelerator,
            parallel_devices=parallel_devices,
            cluster_environment=cluster_environment,
            checkpoint_io=checkpoint_io,
            precision_plugin=precision_plugin,
            process_group_backend=process_group_backend,
            timeout=timedelta(seconds=timeout),
            start_method=start_method,
        )
        self.max_staleness = max_staleness
        #: the bound the engine enforces: ``max_staleness``, or the worker count's default for ``"auto"`` (at setup)
        self.resolved_max_staleness: int | None = None if max_staleness == AUTO else max_staleness  # type: ignore
        self.bound_policy = bound_policy
        self.engine_name = engine
        self.engine_timeout = float(timeout)
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.dynamic_batches = dynamic_batches
        self.lock_free = lock_free
        self.overlap = overlap
        self.on_worker_failure = on_worker_failure
        self.owner_ranks = list(owner_ranks) if owner_ranks is not None else None
        self.print_summary = print_summary
        self.engine: Engine | None = None  # created at setup
        self._local_params: list[torch.nn.Parameter] = []
        self._batch_samples = 0
        self._in_training_step = False
        self._between_batches = False  # inside the training batches of an epoch (no collective may run there)
        self._snapshot: dict[str, Any] | None = None
        self._failure: BaseException | None = None
        self._live: LiveCollectives | None = None  # collectives among the live ranks (on_worker_failure="continue")
        #: the staleness and throughput summary of the last fit (rank 0), see :class:`Telemetry`
        self.telemetry: Telemetry | None = None
        #: wall time this worker has spent taking its reads as its steps start (the engine's ``begin_step``, a wait
        #: for the parameters), seconds, summed over the process's fits. :class:`~lightning_async.testing.Slowdown`
        #: leaves it out of the gradient time it scales
        self.read_seconds = 0.0
        #: wall time this worker took to create its engine (shared memory, or the parameter server's groups), seconds
        self.engine_setup_seconds = 0.0

    # ------------------------------------------------------------------ registry
    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        for name, start_method in (
            ("async_adaptive", "popen"),
            ("async_adaptive_spawn", "spawn"),
            ("async_adaptive_fork", "fork"),
            ("async_adaptive_forkserver", "forkserver"),
        ):
            strategy_registry.register(
                name,
                cls,
                description=f"Asynchronous bounded-staleness adaptive training, start_method '{start_method}'",
                start_method=start_method,
                override=True,
            )

    # ------------------------------------------------------------------ setup
    @override
    def setup_distributed(self) -> None:
        # the user's `timeout` bounds waits for peers that are running; the rendezvous waits for processes that are
        # still starting (N interpreters importing Lightning on a busy machine take tens of seconds), so it gets
        # STARTUP_TIMEOUT_SECONDS at least, and a short `timeout` never fails the launch with a rendezvous error
        reset_seed()
        self.set_world_ranks()
        self._process_group_backend = self._get_process_group_backend()
        env = self.cluster_environment
        assert env is not None
        if dist.is_initialized():
            return
        store = None
        if env.world_size() > 1:
            keep_gloo_on_loopback(self.num_nodes, env.main_address)
            timeout = timedelta(seconds=max(self.engine_timeout, STARTUP_TIMEOUT_SECONDS))
            store = create_store(env.main_address, env.main_port, env.world_size(), env.global_rank(), timeout)
        _init_dist_connection(env, self._process_group_backend, timeout=self._timeout,
                              **({"store": store} if store is not None else {}))

    @override
    def configure_ddp(self) -> None:
        # no DistributedDataParallel wrapper: only start every worker from rank 0's weights, as DDP would
        assert self.model is not None
        _sync_module_states(self.model)

    @override
    def setup(self, trainer: Trainer) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self._validate_trainer(trainer)
        super().setup(trainer)
        # Lightning's SIGTERM handler broadcasts from rank 0 inside the signal handler, a collective that only
        # lockstep peers would meet: a signalled asynchronous worker would hang in it, or fail on a dead peer.
        # Each worker records its own SIGTERM instead (registered after setup, so this instance attribute is used)
        connector = trainer._signal_connector
        connector._sigterm_notifier_fn = partial(_notify_sigterm_locally, connector)  # type: ignore[method-assign]
        if trainer.state.fn == TrainerFn.FITTING:
            # first among the callbacks: theirs then see the epoch's end and the refreshed parameters
            trainer.callbacks.insert(0, _EngineLifecycle(self))
            use_global_step_logging(trainer)
            # Lightning >= 2.5 broadcasts a SIGTERM flag from rank 0 before *every* training batch when
            # distributed: a per-step collective that would put asynchronous workers in lockstep (and pair
            # different steps). Each worker checks its own flag instead; there is no switch for this upstream.
            trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = partial(_raise_on_local_sigterm, trainer)

    def _validate_trainer(self, trainer: Trainer) -> None:
        module = trainer.lightning_module
        if module is not None and not any(p.requires_grad for p in module.parameters()):
            raise ValueError(
                f"{type(module).__name__} has no parameter that requires a gradient, so asynchronous training has "
                "nothing to update (DistributedDataParallel refuses such a module too). Unfreeze some parameters, or "
                "use Trainer(strategy='auto', devices=1) to only run inference."
            )
        cores = os.cpu_count() or 1
        if isinstance(self.accelerator, CPUAccelerator) and self.num_processes > cores:
            rank_zero_warn(
                f"lightning_async: devices={self.num_processes} starts {self.num_processes} worker processes on "
                f"{cores} CPU cores: they take turns on the cores, so each runs slower and updates grow staler. "
                f"Training is still correct; for speed use devices <= {cores}."
            )
        precision = str(trainer.precision)
        if precision not in SUPPORTED_PRECISIONS:
            raise ValueError(
                f"AsyncAdaptiveStrategy does not support precision={precision!r}: a gradient scaler skips "
                "optimizer steps on overflow per worker. Use precision='bf16-mixed' (same memory and speed benefits, "
                "no scaler) or '32-true'."
            )
        if self.num_nodes > 1 and self.engine_name == "shared_memory":
            raise ValueError(
                f"engine='shared_memory' runs on one node, but num_nodes={self.num_nodes}. Use "
                "AsyncAdaptiveStrategy(engine='parameter_server') across nodes, or Trainer(num_nodes=1)."
            )
        if self.world_size > 1:
            for callback in trainer.checkpoint_callbacks:
                if isinstance(callback, ModelCheckpoint) and (
                    callback._every_n_train_steps or callback._train_time_interval is not None
                ):
                    raise ValueError(
                        "ModelCheckpoint(every_n_train_steps=...) or (train_time_interval=...) would checkpoint at a "
                        "different moment on each asynchronous worker (their step counts differ). Use "
                        "ModelCheckpoint(every_n_epochs=...) with AsyncAdaptiveStrategy."
                    )
            interval = trainer.val_check_interval
            if not (isinstance(interval, float) and interval == 1.0):
                raise ValueError(
                    f"Trainer(val_check_interval={interval!r}) would validate at a different moment on each "
                    "asynchronous worker (their batch counts differ). Keep val_check_interval=1.0 and use "
                    "check_val_every_n_epoch with AsyncAdaptiveStrategy."
                )

    @override
    def setup_optimizers(self, trainer: Trainer) -> None:
        super().setup_optimizers(trainer)
        if len(self.optimizers) != 1:
            raise ValueError(
                f"AsyncAdaptiveStrategy trains with exactly one optimizer, but configure_optimizers returned "
                f"{len(self.optimizers)}. Put the parameters in parameter groups of one optimizer instead."
            )
        optimizer = self.optimizers[0]
        if isinstance(optimizer, torch.optim.LBFGS):
            raise ValueError(
                "torch.optim.LBFGS re-evaluates the loss inside step(); an asynchronous engine applies a gradient "
                "computed earlier. Use a first-order optimizer (e.g. lightning_async.optim.AsyncAdam)."
            )
        self._local_params = ordered_params(optimizer)
        may_overlap = (
            self.engine_name == "parameter_server" and self.overlap is not False and self.bound_policy != "wait"
        )
        self.resolved_max_staleness = resolve_max_staleness(self.max_staleness, self.world_size, overlap=may_overlap)
        warning = idle_warning(self.resolved_max_staleness, self.world_size, self.bound_policy, overlap=may_overlap)
        if warning is not None:
            rank_zero_warn(f"lightning_async: {warning}")
        start = time.perf_counter()
        self.engine = self._create_engine(optimizer)
        self.engine_setup_seconds = time.perf_counter() - start
        # a SIGTERM (torchrun stopping the run, a scheduler's preemption) ends a wait at once, not after timeout
        self.engine.interrupt = partial(_raise_on_local_sigterm, trainer)
        self._watch_children()
        self.optimizers = [EngineOptimizer(optimizer, self.engine, self._local_params, self._take_samples)]
        for config in self.lr_scheduler_configs:
            if config.interval == "step" and config.monitor is None:
                config.scheduler = GlobalProgressScheduler(config.scheduler, self.engine)  # type: ignore[assignment]

    def _take_samples(self) -> int:
        """Samples in the micro-batches since the last optimizer step (then start counting again)."""
        samples, self._batch_samples = self._batch_samples, 0
        return samples

    def _create_engine(self, optimizer: torch.optim.Optimizer) -> Engine:
        token = run_token(self.global_rank, clean_shared_memory=self.engine_name == "shared_memory")
        options: dict[str, Any] = (
            dict(overlap=self.overlap, on_worker_failure=self.on_worker_failure, owner_ranks=self.owner_ranks)
            if self.engine_name == "parameter_server" else dict(lock_free=self.lock_free)
        )
        engine = create_engine(
            self.engine_name, token, worker=self.global_rank, num_workers=self.world_size,
            params=self._local_params, optimizer=optimizer, max_staleness=self.resolved_max_staleness,
            bound_policy=self.bound_policy, timeout=self.engine_timeout,
            max_consecutive_nonfinite=self.max_consecutive_nonfinite,
            barrier=partial(self.barrier, "lightning_async.engine_created"), **options,
        )
        if isinstance(engine, ParameterServerEngine) and self.on_worker_failure == "continue" and self.world_size > 1:
            self._continue_without_failed_workers(engine, parameter_server_namespace(token))
        return engine

    def _continue_without_failed_workers(self, engine: ParameterServerEngine, namespace: str) -> None:
        """``on_worker_failure="continue"``: from now on the collectives run among the live ranks, torchmetrics
        syncs through them too, and Lightning's process observer (rank 0 of each node) lets a pure worker die."""
        store = dist.PrefixStore(f"{namespace}/live/", dist.distributed_c10d._get_default_store())
        self._live = LiveCollectives(store, self.global_rank, self.world_size, self.engine_timeout, engine.is_gone)
        for module in self.lightning_module.modules() if self.lightning_module is not None else ():
            if isinstance(module, torchmetrics.Metric):
                module.dist_sync_fn = self._live.gather_tensors
        self._watch_children(tolerated=set(range(self.world_size)) - set(engine.owner_ranks))

    def _watch_children(self, tolerated: set[int] | None = None) -> None:
        """Under Lightning's popen launcher (rank 0 of each node watches its node's other workers): name a worker
        whose process exits with an error, and remove the shared-memory run directory before the launcher's
        observer kills every process of the node (itself included, so no teardown would remove it). Workers in
        ``tolerated`` (pure workers under ``on_worker_failure="continue"``) may exit without stopping the others."""
        observer = next((t for t in threading.enumerate() if isinstance(t, _ChildProcessObserver)), None)
        launcher = self._launcher
        if observer is None or not isinstance(launcher, _SubprocessScriptLauncher):
            return
        first = self.node_rank * self.num_processes
        observer.__class__ = _RunObserver
        observer._ranks = {p.pid: first + i + 1 for i, p in enumerate(launcher.procs)}  # type: ignore[attr-defined]
        if tolerated is not None:
            observer._tolerated = tolerated  # type: ignore[attr-defined]
        engine = self.engine
        if isinstance(engine, SharedMemoryEngine):
            observer._before_kill = partial(shutil.rmtree, engine.directory, ignore_errors=True)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ collectives
    @override
    def barrier(self, name: str | None = None, *args: Any, **kwargs: Any) -> None:
        if self._live is not None:
            self._live.barrier(name)
            return
        super().barrier(name, *args, **kwargs)

    @override
    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if self._between_batches:
            # a broadcast from a per-batch hook (Lightning's Timer for max_time does one every batch) would pair
            # different batches of the workers, or wait for one that already left the epoch: each worker keeps its
            # own value, and a worker that stops tells the others through the engine (see _EngineLifecycle)
            return obj
        if self._live is not None:
            return self._live.broadcast(obj, src)
        return super().broadcast(obj, src)

    @override
    def all_gather(self, tensor: torch.Tensor, group: Any | None = None, sync_grads: bool = False) -> torch.Tensor:
        if self._live is not None:  # the live ranks' tensors: fewer rows than world_size once a worker died
            return torch.stack(self._live.all_gather(tensor))
        return super().all_gather(tensor, group=group, sync_grads=sync_grads)

    @override
    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002 - Lightning's name
        if self._live is not None:
            return self._live.all_true(decision) if all else self._live.any_true(decision)
        return super().reduce_boolean_decision(decision, all=all)

    # ------------------------------------------------------------------ data
    @override
    def process_dataloader(self, dataloader: object) -> object:
        trainer = self.lightning_module.trainer if self.lightning_module is not None else None
        if (
            not self.dynamic_batches
            or self.engine is None
            or trainer is None
            or trainer.state.stage != RunningStage.TRAINING
            or not isinstance(dataloader, DataLoader)
            or isinstance(dataloader.dataset, IterableDataset)
        ):
            return dataloader
        if dataloader.batch_size is None:
            rank_zero_warn(
                "lightning_async: the train DataLoader uses a custom batch_sampler, so batches are split statically "
                "(DistributedSampler) instead of going to whichever worker is free. Pass batch_size to the "
                "DataLoader to enable dynamic batches."
            )
            return dataloader
        kwargs = dynamic_batch_loader_kwargs(dataloader, self.engine)
        # Lightning starts iterating (prefetch) before it calls set_epoch, and on resume it does not iterate again:
        # start at the loop's epoch so a resumed run draws from the right epoch's cursor and permutation
        kwargs["batch_sampler"].set_epoch(trainer.fit_loop.epoch_progress.current.processed)
        kwargs["batch_sampler"].workers = self.world_size
        return DataLoader(dataloader.dataset, **kwargs)

    # ------------------------------------------------------------------ training
    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self._batch_samples += _batch_size(batch)  # summed over accumulate_grad_batches micro-batches
        if self.engine is not None:
            start = time.perf_counter()
            self.engine.begin_step(self._local_params)
            self.read_seconds += time.perf_counter() - start

    @override
    def optimizer_step(self, optimizer: Any, closure: Any, model: Any = None, **kwargs: Any) -> Any:
        output = super().optimizer_step(optimizer, closure, model, **kwargs)
        trainer = self.lightning_module.trainer if self.lightning_module is not None else None
        if trainer is not None and trainer.training:
            # claim the next shared-cursor batch now that this one is done, not when it started (see _fetcher.py);
            # before Lightning's end-of-step logic, which reads whether this was the epoch's last batch
            fetch_ahead(trainer)
        return output

    def _uses_shared_cursor(self, trainer: Trainer) -> bool:
        return shared_cursor_sampler(trainer) is not None

    @override
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        # metrics logged with sync_dist inside training_step are reduced locally: workers run different numbers
        # of steps, so a per-step collective would pair different steps (or hang); epoch-level values still sync
        self._in_training_step = True
        try:
            return super().training_step(*args, **kwargs)
        finally:
            self._in_training_step = False

    @override
    def reduce(self, tensor: Any, group: Any | None = None, reduce_op: Any = "mean") -> Any:
        if self._in_training_step:
            return tensor
        if self._live is not None and isinstance(tensor, torch.Tensor):
            return self._live.reduce(tensor, reduce_op)
        return super().reduce(tensor, group=group, reduce_op=reduce_op)

    # ------------------------------------------------------------------ checkpoints
    @override
    def lightning_module_state_dict(self) -> dict[str, Any]:
        state = super().lightning_module_state_dict()
        if self.engine is None or not self.is_global_zero:
            return state
        self._snapshot = self.engine.snapshot()
        names = _param_names(self.lightning_module, self._local_params)
        for name, value in zip(names, self._snapshot["params"]):
            if name in state:
                state[name] = value
        return state

    @override
    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        if self.engine is None or not self.is_global_zero:
            return super().optimizer_state(optimizer)
        snapshot, self._snapshot = self._snapshot or self.engine.snapshot(), None
        state = dict(snapshot["optimizer"])
        state[_STATE_KEY] = snapshot["engine"]
        return state

    @override
    def load_optimizer_state_dict(self, checkpoint: Any) -> None:
        states = checkpoint["optimizer_states"]
        if self.engine is None or not states:
            super().load_optimizer_state_dict(checkpoint)
            return
        state = dict(states[0])
        engine_state = state.pop(_STATE_KEY, None)
        if engine_state is None:
            rank_zero_warn(
                "lightning_async: the checkpoint has no asynchronous engine state (it was saved by another "
                "strategy); resuming its parameters and optimizer state with versions and counters at 0."
            )
        restore_engine_state(
            self.engine, self.optimizers[0], state, engine_state, is_creator=self.is_global_zero,
            barrier=partial(self.barrier, "lightning_async.state_loaded"),
        )

    # ------------------------------------------------------------------ teardown
    @override
    def on_exception(self, exception: BaseException) -> None:
        # Lightning kills popen children only on KeyboardInterrupt; an asynchronous peer would otherwise keep
        # training (or stay hung) after rank 0 failed. Nothing is left running.
        self._failure = exception
        if isinstance(self.engine, SharedMemoryEngine):
            # tell the peers now, in shared memory: each stops at its next step or wait naming this worker and the
            # cause (under torchrun nothing else would stop them before their own timeout)
            with contextlib.suppress(Exception):
                self.engine.abort(_describe_failure(exception))
        if self.is_global_zero or not isinstance(exception, RunAbortedError):  # else the worker it names says why
            peers = f" Peers: {self.engine.describe_peers()}." if self.engine is not None else ""
            reason = _describe_failure(exception).rstrip()
            reason += "" if reason.endswith((".", "!", "?")) else "."
            print(
                f"lightning_async: worker {self.global_rank} stops the run: {reason}{peers}",
                file=sys.stderr,
                flush=True,
            )
        launcher = self._launcher
        if isinstance(launcher, _SubprocessScriptLauncher) and self.is_global_zero and launcher.procs:
            # Lightning's observer would SIGKILL this process too once it sees the killed peers, before the
            # traceback is printed: retire it, the peers are being stopped here
            for thread in threading.enumerate():
                if thread.name == "child-process-observer" and hasattr(thread, "_child_processes"):
                    thread._child_processes = []  # its next poll then sees nothing to watch and ends
            launcher.kill(_get_sigkill_signal())
            for proc in launcher.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=self.engine_timeout)
        super().on_exception(exception)

    @override
    def teardown(self) -> None:
        engine, self.engine = self.engine, None
        failure, self._failure = self._failure, None
        if engine is not None:
            if failure is not None:
                # a normal close of the parameter server serves the peers until they close too; after a failure
                # here that would keep this process (and its error, printed only after teardown) silent while the
                # peers wait on it. The shared-memory peers are told to stop in on_exception already.
                engine.abort(_describe_failure(failure))
            if isinstance(engine, SharedMemoryEngine) and self.is_global_zero:
                # the others may still read the shared state until they stop: at the end of a fit they are done
                # already (on_train_end waited for them); after a failure they stop within their next step
                wait = ABORT_GRACE_SECONDS if failure is not None else self.engine_timeout
                engine.wait_for_workers(wait, raise_on_failure=False)
            engine.leave()  # shared memory: the last worker out removes the run's directory
        if failure is None and not any(t.name.startswith("lasync-") for t in threading.enumerate()):
            _destroy_process_groups_at_exit()
        self.optimizers = [o.optimizer if isinstance(o, EngineOptimizer) else o for o in self.optimizers]
        super().teardown()


_exit_hook_registered = False


def _destroy_process_groups_at_exit() -> None:
    """Destroy every process group when the interpreter exits, while it is still whole (Lightning does so for NCCL
    only). A gloo worker thread can still hold its last collective's tensors when the interpreter finalizes; freeing
    them then takes the GIL of a dying interpreter and the process aborts ("terminate called without an active
    exception", SIGABRT) after a run that succeeded. Not after a failure, nor while an engine thread still runs: a
    thread blocked in a gloo receive from a dead or silent peer would make the destruction wait for it."""
    global _exit_hook_registered
    if _exit_hook_registered or not (dist.is_available() and dist.is_initialized()):
        return
    _exit_hook_registered = True
    atexit.register(_destroy_process_groups)


def _destroy_process_groups() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class _RunObserver(_ChildProcessObserver):
    """Lightning's observer of the popen children (it polls every 5 s and, when one exits with an error, SIGKILLs
    every process of the node), except that it names the worker that exited, removes the run's shared memory first,
    and lets a tolerated worker (a pure worker under ``on_worker_failure="continue"``) exit alone."""

    _ranks: dict[int, int]
    _tolerated: set[int] = set()
    _before_kill: Any = None

    @override
    def _run(self) -> bool:
        for proc in list(self._child_processes):
            rank = self._ranks.get(proc.pid)
            if proc.poll() and rank in self._tolerated:
                print(
                    f"lightning_async: worker {rank} (pid {proc.pid}) exited with code {proc.returncode}; the other "
                    "workers carry on (on_worker_failure='continue').",
                    file=sys.stderr,
                )
                self._child_processes.remove(proc)
        failed = next((p for p in self._child_processes if p.poll()), None)
        if failed is not None:
            print(
                f"lightning_async: worker {self._ranks.get(failed.pid)} (pid {failed.pid}) exited with code "
                f"{failed.returncode}; stopping every worker of the run.",
                file=sys.stderr,
                flush=True,
            )
            if self._before_kill is not None:
                self._before_kill()
        return super()._run()


class _EngineLifecycle(Callback):
    """Ties the engine to the fit loop: start, epoch ends (flush and refresh), logging, and the final summary."""

    def __init__(self, strategy: AsyncAdaptiveStrategy) -> None:
        self.strategy = strategy
        self._steps = 0  # this worker's own training steps (trainer.global_step counts every worker's updates)

    @property
    def engine(self) -> Any:
        return self.strategy.engine

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.engine is not None:
            self.engine.start()
            self.engine.refresh(self.strategy._local_params)
            # start the workers together, then take the first reads: a worker's first forward pass does one-time
            # work (lazy imports, initialisation) that can hold its interpreter for a fifth of a second, and a peer's
            # first read from the owner in that process would wait as long. The barrier comes first: with more
            # workers than max_staleness + 1 the bound lets only some of them read before the others apply, and a
            # worker holding a read must never wait in a collective for one that waits for the bound
            if trainer.world_size > 1:
                self.strategy.barrier("lightning_async.start")
            self.engine.begin_step(self.strategy._local_params)
            follow_global_progress(trainer, self.engine.version)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.engine is not None and self.strategy._uses_shared_cursor(trainer):
            use_just_in_time_fetcher(trainer)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.strategy._between_batches = False
        if self.engine is not None and trainer.should_stop and not trainer.sanity_checking:
            self.engine.request_stop()  # see on_train_epoch_end: the others validate with this worker, then stop
        # validate the authoritative parameters; flush first so no peer waits on this worker's read meanwhile
        if self.engine is not None and not trainer.sanity_checking:
            self.engine.end_epoch(self.strategy._local_params)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.strategy._between_batches = False
        if self.engine is not None:
            if trainer.should_stop:
                # this worker met a stopping condition of its own (max_time, a callback): the others stop at the end
                # of their current step, so that all of them reach the epoch-end collectives that follow together
                self.engine.request_stop()
            elif self.engine.stop_requested():
                # a worker that met its condition during its last batch of the epoch asked at the start of the
                # epoch-end validation, which all took part in: every worker stops here with it, instead of starting
                # the next epoch, seeing the request at its first step and validating again without that worker
                trainer.should_stop = True
            self.engine.end_epoch(self.strategy._local_params)
            self._log(trainer)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.strategy._between_batches = True
        if batch_idx == 0:  # after the progress bar reset its total to "unknown" at the epoch's start
            show_estimated_length(trainer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self.engine is not None:
            follow_global_progress(trainer, self.engine.version)
            self._steps += 1
            if self.engine.stop_requested():
                trainer.should_stop = True
        show_estimated_length(trainer)
        if fetch_ahead(trainer):
            # a step without an optimizer step (the module's optimizer_step skipped it): the epoch's end is found
            # only now, after Lightning's end-of-step logic, so step the epoch-interval schedulers as it would have
            trainer.fit_loop.epoch_loop.update_lr_schedulers("epoch", update_plateau_schedulers=False)
        if self.engine is not None and trainer.is_global_zero and self._steps % trainer.log_every_n_steps == 0:
            self._log(trainer)

    def _log(self, trainer: Trainer) -> None:
        if not trainer.is_global_zero or not trainer.loggers or self.engine is None:
            return
        metrics = self.engine.telemetry().metrics()
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        engine = self.engine
        if engine is None:
            return
        engine.finish(self.strategy._local_params)
        if trainer.is_global_zero:
            engine.wait_for_workers(self.strategy.engine_timeout)
            engine.refresh(self.strategy._local_params)
            telemetry = engine.telemetry()
            self.strategy.telemetry = telemetry
            self._log(trainer)
            if self.strategy.print_summary:
                rank_zero_info(telemetry.summary())


def _describe_failure(exception: BaseException) -> str:
    if isinstance(exception, SIGTERMException):
        return "SIGTERMException: the worker received SIGTERM"
    return f"{type(exception).__name__}: {str(exception).strip()}"


def _notify_sigterm_locally(connector: Any, signum: Any, frame: Any) -> None:
    """Lightning's SIGTERM notifier without its broadcast: stop the launched children, remember the signal."""
    del frame
    if not connector.received_sigterm:
        print(f"lightning_async: worker {connector.trainer.global_rank} received SIGTERM; it stops the run.",
              file=sys.stderr, flush=True)
        launcher = connector.trainer.strategy.launcher
        if launcher is not None:
            launcher.kill(signum)
    connector.received_sigterm = True


def _raise_on_local_sigterm(trainer: Trainer) -> None:
    if getattr(trainer, "received_sigterm", False):
        raise SIGTERMException()


def _param_names(module: torch.nn.Module | None, params: list[torch.nn.Parameter]) -> list[str]:
    assert module is not None
    by_id = {id(p): name for name, p in module.named_parameters(remove_duplicate=False)}
    return [by_id.get(id(p), "") for p in params]


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_size(batch[0])
    if isinstance(batch, dict) and batch:
        return _batch_size(next(iter(batch.values())))
    return 1


__all__ = ["AsyncAdaptiveStrategy", "BOUND_POLICIES", "ENGINES", "SUPPORTED_PRECISIONS"]
