"""Log the MLflow runs the fault suite promotes, on devstack's real MLflow.

Run as a script with the devstack environment; prints a JSON object {kind: run_id}.

* ``multi``: an MLflow 2 model folder plus a few extra artifacts (8 files), for crash points.
* ``big``: the same plus 7 x 4 MiB of random bytes, so a copy lasts long enough to break it.
* ``many``: 40 extra tiny files, over the suite's PROMOTER_MAX_FILES.
* ``huge``: 36 MiB in one extra file, over the suite's PROMOTER_MAX_BYTES.
* ``small-0`` .. ``small-3``: plain small models, distinct run ids for conflicts.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import mlflow
from runs import _mlflow2_layout

MIB = 1024 * 1024


def _model(base: Path, folder: Path, extra: dict[str, int]) -> Path:
    target = folder / base.name
    shutil.copytree(base, target)
    for rel, size in extra.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size) if size > 4096 else (rel * (size // len(rel) + 1)).encode()[:size])
    return target


def main() -> None:
    mlflow.set_experiment("promoter-faults")
    shapes: dict[str, dict[str, int]] = {
        "multi": {"extra/labels.txt": 300, "extra/features.json": 900, "extra/notes.md": 120,
                  "extra/sample/input.json": 2048},
        "big": {**{f"weights/part-{i}.bin": 4 * MIB for i in range(7)}},
        "many": {f"shards/s-{i:03d}.txt": 64 for i in range(40)},
        "huge": {"weights/all.bin": 36 * MIB},
        **{f"small-{i}": {} for i in range(4)},
    }
    runs: dict[str, str] = {}
    tmp = Path(tempfile.mkdtemp())
    try:
        base = _mlflow2_layout(tmp / "base")  # saved once: save_model infers requirements slowly
        for kind, extra in shapes.items():
            with mlflow.start_run(run_name=kind) as run:
                mlflow.log_metric("rmse", 0.5)
                mlflow.log_artifacts(str(_model(base, tmp / kind, extra)), "rf-regressor")
                runs[kind] = run.info.run_id
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(runs))


if __name__ == "__main__":
    sys.exit(main())
