"""python -m devstack.node --kubeconfig K --home H --pod-cidr C --service-cidr S [--pods N]"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ..kube import Kube
from .containers import stop_leftovers
from .kubelet import Node
from .proxy import ServiceProxy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.node", description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--name", default="devstack")
    parser.add_argument("--pods", type=int, default=6, help="the Node's pods capacity")
    parser.add_argument("--pod-cidr", required=True)
    parser.add_argument("--service-cidr", required=True)
    parser.add_argument("--program", action="append", default=[], metavar="NAME=PATH",
                        help="a local program the image table needs (rclone, mlserver)")
    args = parser.parse_args(argv)
    programs = dict(p.split("=", 1) for p in args.program)
    node = Node(Kube(args.kubeconfig, "devstack-node"), args.name, args.home, args.pod_cidr, args.pods, programs)
    stop_leftovers(node.pods_folder)  # from a node that was killed before it could stop them
    signal.signal(signal.SIGTERM, lambda *_: node.stop.set())
    signal.signal(signal.SIGINT, lambda *_: node.stop.set())
    ServiceProxy(Kube(args.kubeconfig, "devstack-node-proxy"), args.service_cidr, node.log).start(node.stop)
    try:
        node.run()
    finally:
        node.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
