"""python -m devstack.seldon --kubeconfig K"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import sys

from ..kube import Kube
from .controller import Controller


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.seldon", description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ} {message}", flush=True)

    controller = Controller(Kube(args.kubeconfig, "devstack-seldon-double"), log)
    signal.signal(signal.SIGTERM, lambda *_: controller.stop.set())
    signal.signal(signal.SIGINT, lambda *_: controller.stop.set())
    controller.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
