"""Copy (named copy_model.py: a bench/copy.py would shadow the standard library's `copy` for every
script in this folder): a 1 GiB model (several files, one of ~700 MiB) through the operator's Copier, server-side
and streamed, against baselines measured in the same run.

    .venv/bin/python bench/copy_model.py [--size-mib 1024] [--small-mib 256] [--reps 3] [--concurrency 4]

Random bytes in a fake MLflow 2 layout (``<exp>/<run>/artifacts/rf-regressor/``: MLmodel,
model.pkl ~68% of the size, three weights files ~10% each, the rest in a fourth) are put into
devstack's S3 (bucket ``mlflow``) and into a second, independent S3 server (another
``weed mini`` on other ports, same machine) started by this script. Modes, rotated per rep:

* ``cp``             raw ``cp -r`` of the same files on local disk (no fsync)  [baseline]
* ``get+put``        minio-py get_object -> put_object, S3 #2 -> S3 #1, file by file [baseline]
* ``copy_object``    minio-py CopyObject per file on S3 #1, by hand           [server-side baseline]
* ``streamed``       promoter.artifacts.Copier, source on S3 #2, target on S3 #1 (includes read-back)
* ``server-side``    promoter.artifacts.Copier, source and target on S3 #1 (includes read-back)

Each S3 mode runs in a subprocess of its own; its peak RSS is the kernel's VmHWM of that process
(and the parent samples VmRSS every 50 ms too). Verification cost: the same files of the result
are hashed again with Store.hash at the Copier's concurrency, timed, as a fraction of copy time.
The ``--small-mib`` model repeats streamed/server-side/get+put to show peak RSS does not grow
with the model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import common
from common import log

MIB = 1024 * 1024
MODES = ("cp", "get+put", "copy_object", "streamed", "server-side")


def layout(total: int) -> dict[str, int]:
    sizes = {"model.pkl": int(total * 0.68) // MIB * MIB}
    for i in range(3):
        sizes[f"weights-{i}.bin"] = int(total * 0.10) // MIB * MIB
    sizes["MLmodel"] = 400
    sizes["tail.bin"] = total - sum(sizes.values())
    return sizes


def generate(folder: Path, sizes: dict[str, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        with open(folder / name, "wb") as f:
            if name == "MLmodel":
                f.write(b"flavors:\n  sklearn:\n    pickled_model: model.pkl\n".ljust(size, b" "))
                continue
            left = size
            while left:
                n = min(left, 64 * MIB)
                f.write(os.urandom(n))
                left -= n


class SecondS3:
    """Another ``weed mini`` on ports of its own, started and stopped by this script only."""

    def __init__(self, home: Path, access: str, secret: str) -> None:
        from minio import Minio

        self.dir = home / "s3-second"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = common.stack.free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        self.log = open(home / "logs" / "weed-second.log", "ab")
        self.proc = subprocess.Popen(
            [weed, "mini", f"-dir={self.dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={common.stack.free_port()}", f"-volume.port={common.stack.free_port()}",
             f"-filer.port={common.stack.free_port()}", f"-s3.port={self.port}",
             "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false"],
            env={**os.environ, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret},
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.client = Minio(f"127.0.0.1:{self.port}", access_key=access, secret_key=secret, secure=False)
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("second weed exited at start; see logs/weed-second.log")
            try:
                if not self.client.bucket_exists("mlflow"):
                    self.client.make_bucket("mlflow")
                return
            except Exception:  # noqa: BLE001 - not ready yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


# --- the worker: one copy in a process of its own ------------------------------------------


def worker(job: dict[str, Any]) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    from minio import Minio
    from minio.commonconfig import CopySource

    from promoter.artifacts import Copier, ModelFolder, Store

    def minio(endpoint: str) -> Minio:
        return Minio(endpoint.removeprefix("http://"), access_key=job["access"], secret_key=job["secret"],
                     secure=False)

    src_ep = job["src_endpoint"]
    dst_ep = job["dst_endpoint"]
    files: dict[str, int] = job["files"]
    src_prefix, dst_prefix = job["src_prefix"], job["dst_prefix"]
    out: dict[str, Any] = {}
    mode = job["mode"]
    if mode.startswith("streamed/"):  # an experiment: the Copier with other part settings
        import functools

        from promoter import artifacts

        uploads, part = (int(x) for x in mode.split("/")[1].split("x"))
        artifacts.PART_SIZE = part * MIB
        Minio.put_object = functools.partialmethod(Minio.put_object, num_parallel_uploads=uploads)  # type: ignore
    if mode.startswith(("streamed", "server-side")):
        src_store = Store(src_ep, job["access"], job["secret"], "bench")
        dst_store = Store(dst_ep, job["access"], job["secret"], "bench")
        folder = ModelFolder(src_store, "mlflow", src_prefix)
        listed = folder.files()
        copier = Copier(dst_store, "models", dst_prefix, job["concurrency"])
        out["rss_before_mib"] = common.rss_mib(os.getpid())
        t0 = time.monotonic()
        result = copier.copy(folder, listed, {"runId": "bench", "modelName": "rf-regressor"})
        out["seconds"] = time.monotonic() - t0
        out["hwm_mib"] = common.hwm_mib(os.getpid())
        out.update(mode_reported=result.mode, bytes=result.bytes, bytes_through=result.bytes_through)
        t1 = time.monotonic()
        with ThreadPoolExecutor(job["concurrency"]) as pool:
            list(pool.map(lambda p: dst_store.hash("models", f"{dst_prefix}/{p}"), sorted(listed)))
        out["hash_seconds"] = time.monotonic() - t1
    else:
        src, dst = minio(src_ep), minio(dst_ep)
        out["rss_before_mib"] = common.rss_mib(os.getpid())
        t0 = time.monotonic()
        for name, size in sorted(files.items()):
            key = f"{src_prefix}/{name}"
            if mode == "copy_object":
                dst.copy_object("models", f"{dst_prefix}/{name}", CopySource("mlflow", key))
                continue
            resp = src.get_object("mlflow", key)
            try:
                dst.put_object("models", f"{dst_prefix}/{name}", resp, size, part_size=16 * MIB)
            finally:
                resp.close()
                resp.release_conn()
        out["seconds"] = time.monotonic() - t0
        out["hwm_mib"] = common.hwm_mib(os.getpid())
        out.update(bytes=sum(files.values()), bytes_through=sum(files.values()) if mode == "get+put" else 0)
    return out


def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(job)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    sampler = common.RssSampler(proc.pid, every=0.05)
    sampler.start()
    stdout, stderr = proc.communicate(timeout=1800)
    sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"worker {job['mode']} failed:\n{stderr[-3000:]}")
    out = dict(json.loads(stdout.strip().splitlines()[-1]))
    out["sampled_peak_mib"] = sampler.peak
    return out


def cleanup(state: Any, prefix: str) -> None:
    from minio import Minio
    from minio.deleteobjects import DeleteObject

    s3 = Minio(state.s3_endpoint.removeprefix("http://"), access_key=state.s3_access_key,
               secret_key=state.s3_secret_key, secure=False)
    todo = [DeleteObject(o.object_name) for o in s3.list_objects("models", prefix=prefix + "/", recursive=True)]
    for err in s3.remove_objects("models", todo):
        log(f"cleanup: {err}")


def measure(state: Any, second: SecondS3, folder: Path, sizes: dict[str, int], src_prefix: str,
            modes: tuple[str, ...], reps: int, concurrency: int) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    total = sum(sizes.values())
    for rep in range(reps):
        order = modes[rep % len(modes):] + modes[:rep % len(modes)]
        for mode in order:
            if mode == "cp":
                dst = folder.parent / f"cp-{uuid.uuid4().hex[:8]}"
                t0 = time.monotonic()
                subprocess.run(["cp", "-r", str(folder), str(dst)], check=True)
                out = {"seconds": time.monotonic() - t0, "bytes": total, "bytes_through": total}
                shutil.rmtree(dst)
            else:
                dst_prefix = f"bench-{mode.replace('+', '')}-{uuid.uuid4().hex[:8]}"
                job = {"mode": mode, "access": state.s3_access_key, "secret": state.s3_secret_key,
                       "src_endpoint": second.endpoint if mode.startswith(("get+put", "streamed"))
                       else state.s3_endpoint,
                       "dst_endpoint": state.s3_endpoint, "files": sizes, "src_prefix": src_prefix,
                       "dst_prefix": dst_prefix, "concurrency": concurrency}
                out = run_worker(job)
                cleanup(state, dst_prefix)
            out["mib_s"] = total / MIB / out["seconds"]
            runs[mode].append(out)
            log(f"{total // MIB} MiB rep {rep + 1}/{reps} {mode}: {out['seconds']:.2f}s, {out['mib_s']:.0f} MiB/s"
                + (f", peak RSS {out.get('hwm_mib', 0):.0f} MiB" if "hwm_mib" in out else ""))
    return runs


def med(values: list[float]) -> float:
    return common.pct(values, 50)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--small-mib", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4, help="the Copier's (PROMOTER_COPY_CONCURRENCY)")
    parser.add_argument("--variants", default="", metavar="UxP,...",
                        help="experiments: also the streamed Copier with U parallel part uploads of P MiB "
                             "per file (minio's default is 3x16), e.g. --variants 1x16,1x8")
    parser.add_argument("--also-mib", type=int, default=0,
                        help="also stream a model of this size once (peak RSS only), e.g. 2048")
    parser.add_argument("--tag", default="", help="write results/copy-<tag>.json (experiments)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    res, _ = common.experiment("copy", args)
    results: dict[int, dict[str, list[dict[str, Any]]]] = {}
    with common.devstack("copy") as state:
        from minio import Minio

        home = Path(state.home)
        second = SecondS3(home, state.s3_access_key, state.s3_secret_key)
        try:
            s3 = Minio(state.s3_endpoint.removeprefix("http://"), access_key=state.s3_access_key,
                       secret_key=state.s3_secret_key, secure=False)
            variants = tuple(f"streamed/{v}" for v in args.variants.split(",") if v)
            for size_mib, modes, reps in ((args.size_mib, MODES + variants, args.reps),
                                          (args.small_mib, ("get+put", "streamed", "server-side") + variants, 1),
                                          (args.also_mib, ("streamed",) + variants, 1)):
                if not size_mib:
                    continue
                sizes = layout(size_mib * MIB)
                folder = home / f"model-{size_mib}" / "rf-regressor"
                log(f"generating {size_mib} MiB in {len(sizes)} files")
                generate(folder, sizes)
                src_prefix = f"1/{uuid.uuid4().hex}/artifacts/rf-regressor"
                for client in (s3, second.client):
                    for name in sizes:
                        client.fput_object("mlflow", f"{src_prefix}/{name}", str(folder / name), part_size=64 * MIB)
                results[size_mib] = measure(state, second, folder, sizes, src_prefix, modes, reps, args.concurrency)
                shutil.rmtree(folder.parent)
        finally:
            second.stop()

    big = results[args.size_mib]
    speed = {m: med([r["mib_s"] for r in runs]) for m, runs in big.items()}
    # the Copier's read-back is part of its copy time; a streamed copy also hashes in flight
    best_base = max(speed["cp"], speed["get+put"])
    rows = []
    for m, runs in big.items():
        hash_frac = med([r["hash_seconds"] / r["seconds"] for r in runs]) if "hash_seconds" in runs[0] else None
        rows.append([m, med([r["seconds"] for r in runs]), speed[m], speed[m] / best_base, speed[m] / speed["get+put"],
                     int(med([r["bytes_through"] for r in runs])) // MIB,
                     med([r["hwm_mib"] for r in runs]) if "hwm_mib" in runs[0] else "-",
                     med([r["hwm_mib"] - r["rss_before_mib"] for r in runs]) if "hwm_mib" in runs[0] else "-",
                     f"{100 * hash_frac:.0f}%" if hash_frac is not None else "-"])
    res.tables.append(common.table(
        f"copy: {args.size_mib} MiB model, {len(layout(args.size_mib * MIB))} files, median of {args.reps} "
        "(noisy shared machine)",
        ["mode", "s", "MiB/s", "/best base", "/get+put", "MiB through", "peak RSS", "peak-start", "verify"], rows))
    if args.small_mib and args.small_mib in results:
        small = results[args.small_mib]
        also = results.get(args.also_mib, {}) if args.also_mib else {}
        res.tables.append(common.table(
            "copy: peak RSS (VmHWM of the copying process, MiB) by model size",
            ["mode", f"{args.small_mib} MiB", f"{args.size_mib} MiB", "ratio", "sampled peak"]
            + ([f"{args.also_mib} MiB"] if also else []),
            [[m, med([r["hwm_mib"] for r in small[m]]), med([r["hwm_mib"] for r in big[m]]),
              med([r["hwm_mib"] for r in big[m]]) / med([r["hwm_mib"] for r in small[m]]),
              med([r["sampled_peak_mib"] for r in big[m]])]
             + ([med([r["hwm_mib"] for r in also[m]]) if m in also else "-"] if also else []) for m in small]))
    res.data.update({"size_mib": args.size_mib, "small_mib": args.small_mib, "reps": args.reps,
                     "concurrency": args.concurrency, "layout": layout(args.size_mib * MIB),
                     "median_mib_s": speed, "best_baseline_mib_s": best_base, "runs": results})
    res.target("server-side: model bytes through the operator",
               med([r["bytes_through"] for r in big["server-side"]]), 0, "B")
    res.target("streamed / get+put throughput", speed["streamed"] / speed["get+put"], 0.5, higher_is_better=True)
    if args.small_mib and args.small_mib in results:
        s_small = med([r["hwm_mib"] for r in results[args.small_mib]["streamed"]])
        s_big = med([r["hwm_mib"] for r in big["streamed"]])
        res.target("streamed peak RSS growth, big/small model", s_big / s_small, 1.25)
    res.write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
