"""Evaluate a Vlm2Vec model (or a raw VLM, optionally with a LoRA adapter) on MMEB.

    python evaluate_mmeb.py --model_name_or_path outputs/demo --image_dir eval_images \\
        --subset_name all --output_dir runs/mmeb
    python evaluate_mmeb.py --benchmark mmeb-v2 --model_name_or_path outputs/demo --image_dir MMEB-V2 \\
        --subset_name image visdoc --output_dir runs/mmeb   # MMEB-V2 (78 tasks) into runs/mmeb/mmeb-v2/
    python evaluate_mmeb.py --model_name_or_path outputs/demo --corpus_dir my_collection --image_dir images \\
        --output_dir runs/mine --query_instruction "Find a document image that matches the given query:"
    python evaluate_mmeb.py config.yaml                  # the same keys in one YAML file
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 evaluate_mmeb.py ...   # several processes

Bad input (an unknown argument or subset, a missing column, a missing, empty, corrupt or oversized image, malformed
rows, an output folder that cannot be written, a model folder with missing or corrupt weights) prints one
``error: ...`` line and exits with status 2 before any result file is written (see docs/validation.md).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from transformers import HfArgumentParser

from modeling_vlm2vec.common.cli import parse_dataclasses, run_cli
from modeling_vlm2vec.common.distributed import process_device, rank_and_world
from modeling_vlm2vec.common.errors import DataError
from modeling_vlm2vec.common.file_digests import SIDECAR_NAME, FileDigests
from modeling_vlm2vec.common.files import check_writable_folder
from modeling_vlm2vec.common.locations import MMEB_EVAL_DATASET
from modeling_vlm2vec.evaluation import (
    EvalArguments,
    check_collection_prompts,
    evaluate_corpus,
    load_collection,
    load_eval_sets,
    run_evaluation,
)
from modeling_vlm2vec.evaluation.mmeb_v2.runner import check_v2_prompts, load_v2_sets, run_v2_evaluation
from modeling_vlm2vec.loading import load_input_processor, load_vlm2vec


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def body():
        (args,) = parse_dataclasses(HfArgumentParser(EvalArguments), sys.argv[1:] if argv is None else argv)
        device = args.device or process_device()
        # Validate every dataset (and image) before spending minutes loading a large model.
        if args.corpus_dir is not None:
            if args.subset_name or args.benchmark != "mmeb-v1":
                raise DataError("--corpus_dir evaluates your own collection; drop --subset_name and --benchmark")
            if args.top_k < 1:
                raise DataError(f"--top_k must be a positive integer, got {args.top_k}")
        if (args.benchmark == "mmeb-v2" or args.corpus_dir) and (args.truncate_dim, args.cache_dir) != (None, None):
            raise DataError("--truncate_dim and --cache_dir apply to --benchmark mmeb-v1 only")
        # Images checked by an earlier run and unchanged since are not decoded again (see common/file_digests.py).
        digests = FileDigests(Path(args.cache_dir or Path(args.output_dir) / "cache") / SIDECAR_NAME)
        with digests.active():
            if args.corpus_dir is not None:
                collection = load_collection(args.corpus_dir, args.image_dir)
            elif args.benchmark == "mmeb-v2":
                eval_sets = load_v2_sets(args.subsets, args.dataset_name, args.image_dir)
            else:
                eval_sets = load_eval_sets(args.dataset_name or MMEB_EVAL_DATASET, args.subsets, args.image_dir)
        check_writable_folder(args.output_dir)
        prompts = {"query_instruction": args.query_instruction, "corpus_instruction": args.corpus_instruction}
        processor = None
        if args.corpus_dir is not None or args.benchmark == "mmeb-v2":  # the texts, still before loading the model
            processor = load_input_processor(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
        if processor is not None and args.corpus_dir is not None:
            check_collection_prompts(collection, processor, **prompts)
        elif processor is not None:
            check_v2_prompts(eval_sets, processor)
        model = load_vlm2vec(
            args.model_name_or_path,
            lora_adapter=args.lora_adapter,
            dtype=args.dtype,
            device=device,
            trust_remote_code=args.trust_remote_code,
        )
        if rank_and_world()[0] == 0:
            digests.save()  # the data and the model are valid: keep what was checked, even if the run is killed
        common = dict(output_dir=args.output_dir, batch_size=args.batch_size, overwrite=args.overwrite)
        if args.corpus_dir is not None:
            if processor is None:  # an adapter folder: its prompts are known once its base is loaded
                check_collection_prompts(collection, model.processor, **prompts)
            record = evaluate_corpus(
                model,
                collection,
                **prompts,
                top_k=args.top_k,
                model_name=args.model_name_or_path,
                **common,
            )
            print(json.dumps({k: v for k, v in record.items() if isinstance(v, (int, float))}, indent=2))
        elif args.benchmark == "mmeb-v2":
            run_v2_evaluation(model, eval_sets, model_name=args.model_name_or_path, **common)
        else:
            run_evaluation(
                model,
                eval_sets,
                model_name=args.model_name_or_path,
                dataset_name=args.dataset_name or MMEB_EVAL_DATASET,
                truncate_dim=args.truncate_dim,
                cache_dir=args.cache_dir,
                **common,
            )

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
