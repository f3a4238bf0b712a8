"""Fixtures for the recipe tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_intra_op_thread() -> Iterator[None]:
    """Run the tiny recipe models on one intra-op thread.

    On a shared 2-core machine, two threads per tiny convolution spend most of their time waiting for each other
    (measured: ResNet-18 width 4, batch 4, forward + backward, 0.27 s on 2 threads vs 0.03 s on 1 under load).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
