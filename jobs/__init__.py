"""mpo jobs: plain PyTorch work (data, models, attacks, training, evaluation). No Ray here."""

__version__ = "0.1.0"
