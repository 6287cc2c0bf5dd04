"""Mine hard negatives for training with a teacher model.

    python mine_hard_negatives.py --model_name_or_path <checkpoint or raw VLM> --dataset_config <data.yaml> \\
        --output_dir <dir> --num_negatives 8 [--max_score_ratio 0.95] [--margin 0.0] [--skip_top 0] [--batch_size 32]
    accelerate launch mine_hard_negatives.py ...        # each process encodes a share of the unique items
    python train.py ... --dataset_config <dir>/data_config.yaml

Bad input (arguments, data, texts, images, candidate pool, an output that would overwrite an input) prints
``error: ...`` and exits with status 2 before the model is loaded or anything is written (see docs/validation.md).
A killed run resumes from its cache.
"""

from __future__ import annotations

import logging
import sys

from transformers import HfArgumentParser

from modeling_vlm2vec.common.cli import parse_dataclasses, run_cli
from modeling_vlm2vec.common.distributed import process_device
from modeling_vlm2vec.loading import load_input_processor, load_vlm2vec
from modeling_vlm2vec.mining import MiningArguments, check_plan_prompts, mine_hard_negatives, prepare_mining


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def body():
        (args,) = parse_dataclasses(HfArgumentParser(MiningArguments), sys.argv[1:] if argv is None else argv)
        plan = prepare_mining(args)  # every input checked before the (possibly large) model is loaded
        processor = load_input_processor(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
        if processor is not None:
            check_plan_prompts(plan, processor)
        model = load_vlm2vec(
            args.model_name_or_path,
            dtype=args.dtype,
            device=args.device or process_device(),
            trust_remote_code=args.trust_remote_code,
        )
        if processor is None:  # an adapter folder: its prompts are known once its base is loaded
            check_plan_prompts(plan, model.processor)
        mine_hard_negatives(model, plan, args)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
