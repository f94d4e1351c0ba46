"""A fixture for test modules of tiny models: one torch thread (their ops are too small to split, and on a
loaded machine a second thread waiting for its core stalls every op)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
