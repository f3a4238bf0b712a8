"""Simulated asynchrony for research: speed profiles, blocks, test problems, the study's metrics and the CLI.

The engine itself is the strategy's simulated engine (internal; :func:`~lightning_async.sim.run.simulate` drives
it); this package holds what it and its users need around it:

* :mod:`~lightning_async.sim.speeds`: speed profiles of virtual workers (``SPEC`` strings);
* :mod:`~lightning_async.sim.blocks`: blocks, overlap rule, block selection;
* :mod:`~lightning_async.sim.problems`: non-convex problems with exact full gradients, and plug-in ones;
* :mod:`~lightning_async.sim.optimizers`: optimizers by name;
* :mod:`~lightning_async.sim.run`: :func:`~lightning_async.sim.run.simulate`, a run with its exact trajectory;
* :mod:`~lightning_async.sim.metrics`: running minimum, log-log slope, the O(log t / sqrt t) check;
* :mod:`~lightning_async.sim.plot`: figures; :mod:`~lightning_async.sim.cli`: ``python -m lightning_async.sim``.

(This ``__init__`` imports nothing from the engine, so that the engine may import these modules.)
"""
