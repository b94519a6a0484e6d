"""Shared by the science tests: one intra-op thread (the models are tiny; a second thread only adds
synchronisation on a busy CPU)."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
