"""mpo orchestrator: the ``mpo`` CLI and everything Ray (sweeps, grids, status, bench)."""
