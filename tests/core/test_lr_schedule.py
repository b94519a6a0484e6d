import pytest
from forecache.core.lr_schedule import warmup_cosine


def test_warmup_then_cosine_to_a_tenth():
    assert warmup_cosine(0, 100, 1e-3, 10) == pytest.approx(1e-4)
    assert warmup_cosine(10, 100, 1e-3, 10) == pytest.approx(1e-3)
    assert warmup_cosine(55, 100, 1e-3, 10) == pytest.approx(0.55e-3)  # halfway down the cosine
    assert warmup_cosine(100, 100, 1e-3, 10) == warmup_cosine(500, 100, 1e-3, 10) == pytest.approx(1e-4)
