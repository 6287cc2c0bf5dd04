"""What a resumed evaluation pays before it encodes anything: image checks with and without the file digest sidecar,
and the model fingerprint against one read of the same bytes.

1. ``--images`` noise PNGs are checked as evaluation loads them (``check_image_file``: decode + SHA-256) inside a
   fresh ``FileDigests`` store with an empty sidecar (a first run), which is then saved; a second store read from
   that sidecar checks them again (a resumed run: one ``stat`` per image). ``resume_ratio`` = resumed / first time.
2. A model of ``--weights-mib`` float32 weights is fingerprinted (``weights_digest``: every byte, SHA-256 on every
   core) and the same bytes are read back from a safetensors file in the page cache; ``fingerprint_per_read`` =
   fingerprint time / read time. First and resumed passes alternate over ``--rounds`` rounds (medians reported).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import load_average, machine, median, noise_image, report, timed
from safetensors.torch import load_file, save_file

from modeling_vlm2vec.common.file_digests import SETTLED_SECONDS, SIDECAR_NAME, FileDigests
from modeling_vlm2vec.common.fingerprint import weights_digest
from modeling_vlm2vec.data.images import check_image_file


def _check_all(paths: list[Path], sidecar: Path) -> FileDigests:
    store = FileDigests(sidecar)
    with store.active():
        for path in paths:
            check_image_file(path, dataset="bench", row=None)
    return store


def image_checks(folder: Path, count: int, rounds: int) -> dict:
    paths = []
    for i in range(count):
        paths.append(folder / f"{i:06d}.png")
        noise_image(i, (224, 224)).save(paths[-1])
    time.sleep(SETTLED_SECONDS + 0.1)  # files written this instant are not recorded (see file_digests)
    first, resumed = [], []
    for r in range(rounds):
        sidecar = folder / f"round-{r}" / SIDECAR_NAME
        seconds, store = timed(_check_all, paths, sidecar)
        first.append(seconds)
        store.save()
        seconds, again = timed(_check_all, paths, sidecar)
        assert again.computed == 0, "the resumed pass decoded images"
        resumed.append(seconds)
    return {
        "images": count,
        "first_seconds": [round(s, 3) for s in first],
        "resumed_seconds": [round(s, 3) for s in resumed],
        "first_ms_per_image": round(1000 * median(first) / count, 3),
        "resumed_ms_per_image": round(1000 * median(resumed) / count, 4),
        "resume_ratio": round(median(resumed) / median(first), 4),
    }


def fingerprint_cost(folder: Path, mib: int, rounds: int) -> dict:
    side = 2048
    layers = max(1, mib * 2**20 // (side * side * 4))
    model = torch.nn.Sequential(*[torch.nn.Linear(side, side, bias=False) for _ in range(layers)])
    file = folder / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))
    load_file(str(file))  # into the page cache: the read below is the cheapest one
    digest, read = [], []
    for _ in range(rounds):
        digest.append(timed(weights_digest, model)[0])
        read.append(timed(lambda: file.read_bytes())[0])
    return {
        "weights_mib": round(file.stat().st_size / 2**20, 1),
        "fingerprint_seconds": [round(s, 3) for s in digest],
        "read_seconds": [round(s, 3) for s in read],
        "fingerprint_gib_per_s": round(file.stat().st_size / 2**30 / median(digest), 3),
        "fingerprint_per_read": round(median(digest) / median(read), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--weights-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vlm2vec-bench-resume-") as tmp:
        result = {
            "benchmark": "resume_cost",
            "image_checks": image_checks(Path(tmp), args.images, args.rounds),
            "fingerprint": fingerprint_cost(Path(tmp), args.weights_mib, args.rounds),
            "load_average_end": load_average(),
            "machine": machine(),
        }
    report(result)


if __name__ == "__main__":
    main()
