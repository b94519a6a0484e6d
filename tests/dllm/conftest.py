"""Fixtures shared by the dllm tests."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second intra-op thread, which only adds synchronisation on a shared
    CPU. Restored after each module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def no_grad():
    """Gradients off for a module that drives caches by hand (``pytestmark = pytest.mark.usefixtures("no_grad")``):
    their stored features are written in place."""
    with torch.no_grad():
        yield
