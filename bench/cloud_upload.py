"""Cost of a study in cloud storage: the per-epoch upload of a trial's checkpoint against the epoch itself.

A trial in a cloud study uploads each epoch's checkpoint folder (best.pt + last.pt + two small JSON files) to
the bucket (``trainables.cloud_adapter.store``: ``pyarrow.fs.copy_files`` one file at a time, as Ray's own
checkpoint upload does) before it reports the epoch: the upload is on the trial's critical path. This
trains advtune's trial (``finetune.run``) with a reporter that does exactly that upload, through the same
function, to an S3-compatible server on loopback (moto in server mode, pyarrow's real S3 client), and
times each upload against the epoch's ``epoch_seconds``.

Loopback is the upload's best case (no network, but moto's Python server parses every request); scale
``upload_mb_per_s`` to your bucket's bandwidth: a checkpoint's size is what the ratio depends on.

    .venv/bin/python bench/cloud_upload.py            # small CNN + PreActResNet-18 on digits, 4 epochs (~3 min)
    .venv/bin/python bench/cloud_upload.py --quick    # small CNN, 2 epochs (~30 s)

Prints one line per model:
    RATIO upload_over_epoch=<x> model=<m> upload_s=<median s> epoch_s=<median s> ckpt_mb=<MB> upload_mb_per_s=<MB/s>
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2)
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if time.time() > deadline:
                proc.kill()
                raise
            time.sleep(0.2)


class UploadingReporter:
    """Uploads each checkpoint folder as a cloud study's trial does, timing it."""

    def __init__(self, fs, root: str) -> None:
        self.fs, self.root = fs, root
        self.uploads: list[float] = []
        self.epochs: list[float] = []
        self.sizes: list[int] = []

    def report(self, metrics, checkpoint_dir):
        from advtune.trainables.cloud_adapter import _seal, store

        if checkpoint_dir is None:
            return
        _seal(checkpoint_dir, metrics["epoch"], [metrics])
        dest = f"{self.root}/checkpoint_{len(self.uploads):06d}"
        t0 = time.perf_counter()
        store(self.fs, checkpoint_dir, dest)
        self.uploads.append(time.perf_counter() - t0)
        self.epochs.append(metrics["epoch_seconds"])
        self.sizes.append(sum(p.stat().st_size for p in Path(checkpoint_dir).iterdir()))
        shutil.rmtree(checkpoint_dir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("ADVTUNE_CACHE", tempfile.mkdtemp(prefix="advtune-bench-cache-"))
    proc, endpoint = _moto()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=endpoint, AWS_EC2_METADATA_DISABLED="true")
    try:
        import pyarrow.fs as pafs

        from advtune.trainables import finetune
        from advtune.trainables.config import TrialConfig

        pafs.FileSystem.from_uri("s3://bench?allow_bucket_creation=true")[0].create_dir("bench")
        fs, _ = pafs.FileSystem.from_uri("s3://bench/")
        models = ["small_cnn"] if args.quick else ["small_cnn", "preact_resnet18"]
        epochs = 2 if args.quick else 4
        for model in models:
            # the default study trial (PGD-7 training, PGD-10 validation) from scratch: the epoch the upload joins
            cfg = TrialConfig(dataset="digits", model=model, pretrained="none", epochs=epochs, device="cpu",
                              **({"train_steps": 2, "val_steps": 3} if args.quick else {}))
            reporter = UploadingReporter(fs, f"bench/{model}")
            finetune.run(cfg, reporter)
            up, ep = statistics.median(reporter.uploads), statistics.median(reporter.epochs)
            mb = statistics.median(reporter.sizes) / 1e6
            print(f"RATIO upload_over_epoch={up / ep:.4f} model={model} upload_s={up:.4f} epoch_s={ep:.3f} "
                  f"ckpt_mb={mb:.2f} upload_mb_per_s={mb / up:.1f}", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
