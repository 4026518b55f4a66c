"""Run every benchmark, one after the other (each on a devstack of its own), then print the
targets of all of them in one table and write bench/results/summary.json.

    .venv/bin/python bench/run_all.py [--minutes 30] [--only latency,scale,memory,copy] [--profile]

``make bench`` runs this with the defaults (the memory churn loop takes --minutes; about
40 minutes in all on an idle 2-core machine). Run it on an idle machine: the numbers are
wall-clock times and the baselines in each script only cancel part of the noise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import common

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30, help="memory.py's churn loop")
    parser.add_argument("--only", default="latency,scale,memory,copy,serving")
    parser.add_argument("--profile", action="store_true", help="py-spy record the operator (latency, scale)")
    args = parser.parse_args()
    commands = {
        "latency": ["latency.py"] + (["--profile"] if args.profile else []),
        "scale": ["scale.py"] + (["--profile"] if args.profile else []),
        "memory": ["memory.py", "--minutes", str(args.minutes)],
        "copy": ["copy_model.py"],
        "serving": ["serving.py"],
    }
    failed = []
    timings = {}
    for name in args.only.split(","):
        cmd = [sys.executable, str(HERE / commands[name][0]), *commands[name][1:]]
        common.log(f"== {name}: {' '.join(cmd)}")
        t0 = time.monotonic()
        rc = subprocess.call(cmd)
        timings[name] = time.monotonic() - t0
        if rc != 0:
            failed.append(name)
            common.log(f"== {name} failed (exit {rc})")
    rows, summary = [], {"timings_s": timings, "failed": failed, "targets": {}}
    for name in args.only.split(","):
        path = common.RESULTS / f"{name}.json"
        if name in failed or not path.exists():
            continue
        targets = json.loads(path.read_text()).get("targets", [])
        summary["targets"][name] = targets
        for t in targets:
            rows.append([name, t["target"], f"{t['value']:.3g} {t['unit']}".strip(),
                         f"{t['limit']:.3g} {t['unit']}".strip(), "yes" if t["met"] else "NO"])
    print(common.table("all benchmarks: targets", ["bench", "target", "value", "limit", "met"], rows))
    summary["machine"] = common.machine()
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    (common.RESULTS / "summary.json").write_text(json.dumps(summary, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
