"""The unit tier's shared fixture: a world of in-memory gateways (tests/unit/fakes.py)."""

from __future__ import annotations

import pytest

from .fakes import RUN_A, RUN_B, World


@pytest.fixture
def world() -> World:
    """The operator's context over fakes, with two finished runs (rmse 0.5) whose models are in
    MLflow's artifact store."""
    w = World()
    for run_id in (RUN_A, RUN_B):
        w.mlflow.add_run(run_id, {"rmse": 0.5})
        w.s3.put_model(run_id)
    return w
