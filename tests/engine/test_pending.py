"""PendingUpdate: the update a worker holds until the bound admits it (every engine and the simulator use it)."""

from __future__ import annotations

import pytest
import torch

from lightning_async._engine.pending import PendingUpdate


def _grads(*values: float | None) -> list[torch.Tensor | None]:
    return [None if v is None else torch.full((3,), v) for v in values]


def test_one_gradient_is_offered_as_it_is_and_borrowed() -> None:
    grads = _grads(1.0, None)
    pending = PendingUpdate()
    assert not pending
    pending.add(grads, samples=4)
    assert pending and pending.count == 1 and pending.samples == 4
    update = pending.update()
    assert update[0] is grads[0] and update[1] is None  # no copy: usually applied before the caller moves on


@pytest.mark.parametrize(("reduction", "expected"), [("mean", 2.0), ("sum", 6.0)])
def test_several_gradients_are_offered_as_their_mean_or_sum(reduction: str, expected: float) -> None:
    pending = PendingUpdate()
    for value, samples in ((1.0, 4), (2.0, 4), (3.0, 2)):
        pending.add(_grads(value, None, value), samples)
    update = pending.update(reduction)
    assert pending.count == 3 and pending.samples == 10
    assert torch.equal(update[0], torch.full((3,), expected)) and update[1] is None
    assert torch.equal(update[2], torch.full((3,), expected))


def test_the_mean_is_exact_for_equal_gradients() -> None:
    # divided by the count, not multiplied by its reciprocal: n equal gradients average to the gradient exactly
    value = 0.1
    pending = PendingUpdate()
    for _ in range(3):
        pending.add(_grads(value), 1)
    assert torch.equal(pending.update()[0], torch.full((3,), value))


def test_keep_copies_so_the_caller_may_zero_its_gradients() -> None:
    grads = _grads(1.0)
    pending = PendingUpdate()
    pending.add(grads, 1)
    pending.keep()
    grads[0].zero_()
    assert torch.equal(pending.update()[0], torch.ones(3))


def test_a_second_gradient_never_writes_into_the_callers_first() -> None:
    first, second = _grads(1.0), _grads(2.0)
    pending = PendingUpdate()
    pending.add(first, 1)
    pending.add(second, 1)
    assert torch.equal(first[0], torch.ones(3)) and torch.equal(second[0], torch.full((3,), 2.0))
    assert torch.equal(pending.update("sum")[0], torch.full((3,), 3.0))


def test_a_gradient_for_a_tensor_that_had_none_is_copied_in() -> None:
    pending = PendingUpdate()
    pending.add(_grads(None), 1)
    late = _grads(5.0)
    pending.add(late, 1)
    late[0].zero_()
    assert torch.equal(pending.update("sum")[0], torch.full((3,), 5.0))


def test_keep_with_copies_uses_them_and_own_copies_at_once() -> None:
    pending = PendingUpdate()
    pending.add(_grads(1.0), 1)
    copy = _grads(1.0)
    pending.keep(copy)
    assert pending.grads[0] is copy[0]
    owned = PendingUpdate()
    grads = _grads(2.0)
    owned.add(grads, 1, own=True)
    grads[0].zero_()
    assert torch.equal(owned.update()[0], torch.full((3,), 2.0))


def test_adopt_takes_the_tensors_without_a_copy_and_sums_in_place() -> None:
    grads = _grads(1.0)
    pending = PendingUpdate()
    pending.add(grads, 1, adopt=True)
    pending.add(_grads(1.0), 1, adopt=True)
    assert pending.grads[0] is grads[0] and torch.equal(grads[0], torch.full((3,), 2.0))


def test_clear_forgets_everything() -> None:
    pending = PendingUpdate()
    pending.add(_grads(1.0), 7)
    pending.clear()
    assert not pending and pending.count == 0 and pending.samples == 0 and pending.update() == []
