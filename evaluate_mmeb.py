"""Evaluate a Vlm2Vec model (or a raw VLM, optionally with a LoRA adapter) on MMEB.

    python evaluate_mmeb.py --model_name_or_path outputs/demo --image_dir eval_images \\
        --subset_name all --output_dir runs/mmeb
    python evaluate_mmeb.py config.yaml                  # the same keys in one YAML file
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 evaluate_mmeb.py ...   # several processes

Bad input (unknown subset, missing column or image, malformed rows) prints ``error: ...`` and exits with status 2
before any result file is written.
"""

from __future__ import annotations

import logging
import sys

from transformers import HfArgumentParser

from modeling_vlm2vec.common.cli import parse_dataclasses, run_cli
from modeling_vlm2vec.common.distributed import process_device
from modeling_vlm2vec.evaluation import EvalArguments, load_eval_sets, run_evaluation
from modeling_vlm2vec.loading import load_vlm2vec


def main(argv: list[str] | None = None) -> int:
    (args,) = parse_dataclasses(HfArgumentParser(EvalArguments), sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = args.device or process_device()

    def body():
        # Validate every dataset (and image) before spending minutes loading a large model.
        eval_sets = load_eval_sets(args.dataset_name, args.subsets, args.image_dir)
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
