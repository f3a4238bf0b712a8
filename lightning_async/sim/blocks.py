"""Public home of the simulated engine's blocks (the module text is the implementation's docstring)."""

from lightning_async._engine import blocks as _implementation
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

__doc__ = _implementation.__doc__
__all__ = [
    "BLOCK_SCHEMES",
    "OVERLAPS",
    "SELECTIONS",
    "BlockLayout",
    "BlockSelector",
    "BlocksSpec",
    "make_blocks",
    "parse_block_groups",
]
