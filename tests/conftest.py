"""Fixtures shared by several test files."""

import pytest


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (tiny models beside simulator workers on 2 cores), restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
