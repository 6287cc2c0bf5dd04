"""Train a VLM2Vec embedding model: ``python train.py <recipe.yaml>`` or ``accelerate launch train.py <recipe.yaml>``.

Arguments are HfArgumentParser dataclasses — model (`ModelArguments`), data (`DataArguments`), LoRA
(`LoraArguments`) and every `TrainingArguments` field plus GradCache and sampler settings
(`ContrastiveTrainingArguments`) — given as ``--snake_case`` flags or as the keys of one YAML file passed alone.
Bad input prints ``error: ...`` and exits with status 2.
"""

from __future__ import annotations

import sys

from transformers import HfArgumentParser

from modeling_vlm2vec.errors import DataError
from modeling_vlm2vec.pipeline import DataArguments, ModelArguments, run
from modeling_vlm2vec.training.arguments import ContrastiveTrainingArguments, LoraArguments


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((ModelArguments, DataArguments, LoraArguments, ContrastiveTrainingArguments))
    try:
        if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
            model_args, data_args, lora_args, training_args = parser.parse_yaml_file(argv[0])
        else:
            model_args, data_args, lora_args, training_args = parser.parse_args_into_dataclasses(argv)
        run(model_args, data_args, lora_args, training_args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
