"""Blocks of parameters, their overlap, and which blocks a worker selects at each step.

A *block* (design vocabulary) is a set of parameter tensors; it is the unit of versions, of staleness and of
selection. :func:`make_blocks` builds them from a model:

* ``"all"``: one block holding every parameter;
* ``"tensor"``: one block per parameter tensor (the default of the design);
* ``"layer"``: one block per module that owns parameters (e.g. ``fc1.weight`` and ``fc1.bias`` together);
* user groups: a sequence of sequences of parameter names (``[["fc1.weight", "fc1.bias"], ["fc1.bias", ...]]``),
  or the same written as text, ``"fc1.weight,fc1.bias;fc1.bias,fc2.weight"``. Groups may overlap.

The rule for overlapping coordinates (blocks that share a tensor):

* the optimizer state of a shared tensor is one state (one accumulator per coordinate, invariant 1);
* an update of a block writes every tensor of the block, so it advances the version of every block that shares a
  tensor with it (its *touched* blocks), and the staleness bound is checked on each touched block;
* ``overlap="sum"``: each update applies the optimizer's full step to a shared tensor;
  ``overlap="average"``: the step on a tensor that lies in ``m`` blocks is divided by ``m`` (its multiplicity).

Selection per step (:class:`BlockSelector`): ``"all"`` (every block at every step), ``"cyclic"`` (worker ``p`` at its
``n``-th step takes block ``(p + n) mod m``) or ``"random"`` (uniform over the ``m`` blocks, from the run's
generator).


The implementation lives with the simulated engine that uses it; this is its public home.
"""

from lightning_async._engine.blocks import (
    BLOCK_SCHEMES,
    OVERLAPS,
    SELECTIONS,
    BlockLayout,
    BlockSelector,
    BlocksSpec,
    make_blocks,
    parse_block_groups,
)

__all__ = ["BLOCK_SCHEMES", "OVERLAPS", "SELECTIONS", "BlockLayout", "BlockSelector", "BlocksSpec", "make_blocks", "parse_block_groups"]
