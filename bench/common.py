"""Shared pieces of the benchmarks: offline environment, the bench backbone, contrastive batches, timing, reports.

Every benchmark script prints a JSON object as its last line. Importing this module sets the offline environment and
the thread count (2 intra-op threads, the machine's cores) before torch / transformers are used.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="vlm2vec-bench-hf-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: `python bench/x.py` finds the package

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

THREADS = 2
torch.set_num_threads(THREADS)

from modeling_vlm2vec import Vlm2VecModel  # noqa: E402
from modeling_vlm2vec.data.collator import collate_group  # noqa: E402
from modeling_vlm2vec.demo import save_tiny_backbone  # noqa: E402

#: The bench backbone: LLaVA-Next with a 512-wide, 8-layer Llama (19.5 M parameters), 28 px CLIP tiles.
BENCH_BACKBONE = {"model_type": "llava_next", "hidden_size": 512, "num_layers": 8, "image_size": 28}
CACHE_DIR = Path(os.environ.get("VLM2VEC_BENCH_CACHE", Path(tempfile.gettempdir()) / "vlm2vec-bench"))

WORDS = (
    "red green blue yellow purple orange black white gray circle square triangle cross star on a the background "
    "shape colour what which image of with"
).split()
QUERY_PREFIX = "<|image_1|> Represent the given image with the following question: "
TEXT_PREFIX = "Find me an everyday image that matches the given caption: "


def add_backbone_arguments(parser) -> None:
    """The bench backbone's size flags (``--hidden-size``, ``--layers``), shared by every script."""
    parser.add_argument("--hidden-size", type=int, default=BENCH_BACKBONE["hidden_size"])
    parser.add_argument("--layers", type=int, default=BENCH_BACKBONE["num_layers"])


def backbone_size(args) -> dict:
    """The size overrides the flags of :func:`add_backbone_arguments` ask for (keywords of ``load_bench_model``)."""
    return {"hidden_size": args.hidden_size, "num_layers": args.layers}


def backbone_flags(args) -> list[str]:
    """The same size flags on a command line (for the scripts' own subprocesses)."""
    return ["--hidden-size", str(args.hidden_size), "--layers", str(args.layers)]


def backbone_spec(args) -> dict:
    """The full bench backbone spec a run used, for its report."""
    return {**BENCH_BACKBONE, **backbone_size(args)}


def bench_backbone_dir(**overrides) -> Path:
    """Folder of the bench backbone (built once, deterministically, and reused from ``CACHE_DIR``)."""
    spec = {**BENCH_BACKBONE, **overrides}
    name = "-".join(f"{k}={v}" for k, v in sorted(spec.items()))
    path = CACHE_DIR / name
    if not (path / "config.json").is_file():
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=_ensure(CACHE_DIR)))
        save_tiny_backbone(spec.pop("model_type"), staging, **spec)
        try:
            os.replace(staging, path)
        except OSError:  # built meanwhile by a concurrent run: keep that one
            shutil.rmtree(staging, ignore_errors=True)
    return path


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_bench_model(**overrides) -> Vlm2VecModel:
    """The bench backbone wrapped as a `Vlm2VecModel` (float32, sdpa attention, train mode)."""
    return Vlm2VecModel.from_backbone(bench_backbone_dir(**overrides)).train()


def noise_image(seed: int, size: tuple[int, int] = (40, 32)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def contrastive_batch(model: Vlm2VecModel, batch_size: int, negatives_every: int = 4, seed: int = 0) -> dict:
    """A training batch as the collator makes it: ``batch_size`` queries of one image plus a question, as many
    text positives (captions), and one text hard negative for every ``negatives_every``-th row (0 = none)."""
    rng = random.Random(seed)
    queries = [(QUERY_PREFIX + _words(rng, 4, 12) + "?", noise_image(seed * 100_000 + i)) for i in range(batch_size)]
    positives = [(TEXT_PREFIX + _words(rng, 6, 16), None) for _ in range(batch_size)]
    neg_rows = [i for i in range(batch_size) if negatives_every and i % negatives_every == 0]
    negatives = [(TEXT_PREFIX + _words(rng, 6, 16), None) for _ in neg_rows]

    def group(items):
        return collate_group(model.processor, [t for t, _ in items], [img for _, img in items])

    batch = {"query": group(queries), "positive": group(positives)}
    if negatives:
        batch["negative"] = group(negatives)
    return batch


def groups_of(batch: dict) -> dict:
    return {name: batch[name] for name in ("query", "positive", "negative") if name in batch}


def describe_batch(batch: dict) -> dict:
    """Rows and padded sequence length of every group."""
    return {name: list(g["input_ids"].shape) for name, g in groups_of(batch).items()}


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def allocator() -> str:
    """The C allocator serving this process: a preloaded jemalloc / tcmalloc / mimalloc, else the C library's malloc.

    Peak resident memory depends on it (glibc keeps freed heap resident; see BENCHMARKS.md, section 2). Read from the
    shared objects mapped into the process, so an ``LD_PRELOAD`` shows up here.
    """
    maps = Path("/proc/self/maps")
    if not maps.exists():  # not Linux
        return f"{platform.system()} system malloc"
    mapped = {
        Path(line.split()[-1]).name
        for line in maps.read_text().splitlines()
        if line.rstrip().endswith(".so") or ".so." in line
    }
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        found = sorted(lib for lib in mapped if name in lib)
        if found:
            return f"{name} ({found[0]})"
    return f"{platform.libc_ver()[0] or 'libc'} malloc"


def machine() -> dict:
    """What the figures were measured on."""
    import transformers

    model_name = platform.processor() or ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model_name = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return {
        "cpu": model_name,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "allocator": allocator(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": load_average(),
    }


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def report(result: dict) -> None:
    """Print the result as the last line of output (one JSON object)."""
    print(json.dumps(result, sort_keys=False), flush=True)


def run_json(args: list[str], env: dict | None = None, timeout: float = 600) -> dict:
    """Run ``python <args>`` in a fresh process and return the JSON object its last output line holds."""
    completed = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])
