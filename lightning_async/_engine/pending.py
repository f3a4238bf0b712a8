"""The update a worker holds until the bound admits it: one type for every engine and the simulator."""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: how ``"accumulate"`` combines the gradients a worker computed on one read into one update
ACCUMULATE_REDUCTIONS = ("mean", "sum")


class PendingUpdate:
    r"""The gradients a worker computed on one read and has not had applied yet, and the samples they carry.

    Under ``bound_policy="accumulate"`` an update the bound does not admit stays here, and the worker's next gradient
    (on the same parameters) is added to it. What is offered is their mean,

    .. math:: u = \frac{1}{n} \sum_{j=1}^{n} g_j ,

    so an admitted update has the scale of one gradient whatever ``n`` (``reduction="sum"`` offers the sum; the
    simulator measures both, see ``docs/benchmarks.md``).

    The first gradient is borrowed, not copied: it is usually offered and applied at once, before the caller touches
    its gradients again. :meth:`keep` copies it once the update outlives the step (the caller is told
    ``"deferred"`` and may zero or reuse its gradients), and so does the next :meth:`add`.
    """

    __slots__ = ("grads", "count", "samples", "_owned")

    def __init__(self) -> None:
        self.grads: list[torch.Tensor | None] | None = None
        self.count = 0
        self.samples = 0
        self._owned = False

    def __bool__(self) -> bool:
        return self.count > 0

    def add(
        self, grads: Sequence[torch.Tensor | None], samples: int, *, own: bool = False, adopt: bool = False
    ) -> None:
        """Add one gradient (``None`` where a tensor got none) computed on the same read.

        Args:
            grads: the gradient, one tensor (or ``None``) per parameter.
            samples: the samples it was computed on.
            own: copy it now (the caller will zero or reuse its tensors).
            adopt: the tensors are handed over (nobody else holds them): own them without a copy.
        """
        if self.grads is None:
            self.grads = _copied(grads) if own else list(grads)
            self._owned = own or adopt
        else:
            self.keep()
            pending = self.grads
            for i, g in enumerate(grads):
                if g is None:
                    continue
                held = pending[i]
                if held is None:
                    pending[i] = g.detach().clone()
                else:
                    held.add_(g)
        self.count += 1
        self.samples += samples

    def keep(self, copies: Sequence[torch.Tensor | None] | None = None) -> None:
        """Own the buffers from now on: the caller may zero or reuse the gradients it passed to :meth:`add`.
        ``copies``: exact copies of the borrowed gradients made elsewhere (for example the frame that was sent), used
        instead of new ones."""
        if self.grads is not None and not self._owned:
            self.grads = _copied(self.grads) if copies is None else list(copies)
            self._owned = True

    def update(self, reduction: str = "mean") -> list[torch.Tensor | None]:
        """The update to offer: the gradients' mean (or their sum); the gradient itself when there is one."""
        grads = list(self.grads or ())
        if reduction == "sum" or self.count <= 1:
            return grads
        return [None if g is None else g.div(self.count) for g in grads]

    def clear(self) -> None:
        """Forget the update (applied, or rejected for good)."""
        self.grads = None
        self.count = 0
        self.samples = 0
        self._owned = False

    def __repr__(self) -> str:
        return f"PendingUpdate({self.count} gradients, {self.samples} samples)"


def _copied(grads: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
    return [None if g is None else g.detach().clone() for g in grads]
