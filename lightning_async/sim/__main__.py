"""``python -m lightning_async.sim``: see :mod:`lightning_async.sim.cli`."""

from lightning_async.sim.cli import main

raise SystemExit(main())
