import pytest
import torch

from forecache.core.testing.toy import ToyAdapter, ToyTransformer, toy_inputs

STEPS = torch.linspace(1.0, 0.05, 12)


@pytest.fixture
def toy():
    torch.manual_seed(0)
    return ToyTransformer().eval()


@pytest.fixture
def adapter():
    return ToyAdapter()


@pytest.fixture
def inputs():
    return toy_inputs(batch=2)
