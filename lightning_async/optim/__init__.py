"""Update rules: the paper's class of asynchronous adaptive methods as torch optimizers and as functions.

Public API:

* optimizer classes (``torch.optim.Optimizer`` subclasses, all derived from :class:`AsyncOptimizer`):
  :class:`AsyncSGD`, :class:`AsyncAdagrad`, :class:`AsyncAdaNorm`, :class:`AsyncRMSprop`, :class:`AsyncAdam`,
  :class:`AsyncAdamW`, :class:`AsyncMuon` (torch-compatible presets) and :class:`AsyncAdaptive` (every part
  explicit). ``step(closure=None, *, staleness=0)``; ``init_state()`` creates the first update's state eagerly.
* the rule on blocks, outside any optimizer: :func:`lightning_async.optim.functional.apply_rule`
  (re-exported here as :func:`apply_rule`), and the literal reference
  :func:`lightning_async.optim.reference.reference_update`.

See ``docs/optimizers.md`` for the math of every part and preset and its mapping to torch and to the paper.
"""

from lightning_async.optim.functional import apply_rule
from lightning_async.optim.optimizer import RULE_DEFAULTS, AsyncOptimizer
from lightning_async.optim.presets import (
    AsyncAdagrad,
    AsyncAdam,
    AsyncAdamW,
    AsyncAdaNorm,
    AsyncAdaptive,
    AsyncMuon,
    AsyncRMSprop,
    AsyncSGD,
)
from lightning_async.optim.reference import reference_update
from lightning_async.optim.spec import RuleSpec, init_block_state

__all__ = [
    "RULE_DEFAULTS",
    "AsyncAdaNorm",
    "AsyncAdagrad",
    "AsyncAdam",
    "AsyncAdamW",
    "AsyncAdaptive",
    "AsyncMuon",
    "AsyncOptimizer",
    "AsyncRMSprop",
    "AsyncSGD",
    "RuleSpec",
    "apply_rule",
    "init_block_state",
    "reference_update",
]
