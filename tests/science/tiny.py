"""The tiny EGNN configuration the science wiring tests use."""

from forecache.science.model import EGNNConfig

TINY = EGNNConfig(hidden=16, layers=2, message=8, edge_hidden=4, rbf=4, time_features=4, max_atoms=8)
