"""python -m devstack up | down | env | status | demo"""

from __future__ import annotations

import argparse
import shlex
import sys

from . import stack
from .binaries import SetupError


def _env(state: stack.State) -> str:
    lines = [f"export {k}={shlex.quote(v)}" for k, v in state.env().items()]
    lines.append(f"export PATH={shlex.quote(state.bin_dir)}:\"$PATH\"")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "env", "status", "demo"])
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        if args.command == "up":
            try:
                stack.up(log=log)
            except stack.AlreadyRunning as e:
                log(f"devstack: {e}")
                return 0
            log('devstack: ready. Next: eval "$(.venv/bin/python -m devstack env)"; kubectl get ns')
            return 0
        if args.command == "down":
            stack.down(log=log)
            return 0
        state = stack.running()
        if args.command == "env":
            if state is None:
                log("devstack: not running (`python -m devstack up` starts it)")
                return 1
            print(_env(state))
            return 0
        if args.command == "status":
            rows = stack.status()
            if not rows:
                log("devstack: not running")
                return 1
            print(f"{'PROCESS':24} {'PID':>8} {'STATE':8} {'RSS MiB':>8}")
            for name, pid, ok, rss in rows:
                print(f"{name:24} {pid:>8} {'running' if ok else 'stopped':8} {rss / 1024:>8.0f}")
            if state:
                print(f"\nkube-apiserver {state.kube_url}\nS3 {state.s3_endpoint}\nMLflow {state.mlflow_uri}")
            return 0 if state else 1
        if args.command == "demo":
            from . import demo

            return demo.main(log)
    except SetupError as e:
        log(f"devstack: {e}")
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
