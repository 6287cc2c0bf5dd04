"""Evaluate a Vlm2Vec model (or a raw VLM, optionally with a LoRA adapter) on MMEB.

    python evaluate_mmeb.py --model_name_or_path outputs/demo --image_dir eval_images \\
        --subset_name all --output_dir runs/mmeb
    python evaluate_mmeb.py config.yaml                  # the same keys in one YAML file
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 evaluate_mmeb.py ...   # several processes

Bad input (an unknown argument or subset, a missing column, a missing, empty, corrupt or oversized image, malformed
rows, an output folder that cannot be written, a model folder with missing or corrupt weights) prints one
``error: ...`` line and exits with status 2 before any result file is written.
"""

from __future__ import annotations

import logging
import sys

from transformers import HfArgumentParser

from modeling_vlm2vec.common.cli import parse_dataclasses, run_cli
from modeling_vlm2vec.common.files import check_writable_folder
from modeling_vlm2vec.evaluation import EvalArguments, load_eval_sets, run_evaluation
from modeling_vlm2vec.loading import load_vlm2vec


def _default_device() -> str:
    # PartialState joins the process group under accelerate/torchrun (gloo on CPU-only machines) and gives this
    # process its own device; in a plain single process it is cuda:0 when available, else cpu.
    import torch
    from accelerate import PartialState

    return str(PartialState(cpu=not torch.cuda.is_available()).device)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def body():
        (args,) = parse_dataclasses(HfArgumentParser(EvalArguments), sys.argv[1:] if argv is None else argv)
        device = args.device or _default_device()
        # Validate every dataset (and image) before spending minutes loading a large model.
        eval_sets = load_eval_sets(args.dataset_name, args.subsets, args.image_dir)
        check_writable_folder(args.output_dir)
        model = load_vlm2vec(
            args.model_name_or_path,
            lora_adapter=args.lora_adapter,
            dtype=args.dtype,
            device=device,
            trust_remote_code=args.trust_remote_code,
        )
        run_evaluation(
            model,
            eval_sets,
            output_dir=args.output_dir,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
            model_name=args.model_name_or_path,
            dataset_name=args.dataset_name,
        )

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
