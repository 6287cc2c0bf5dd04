"""Train a VLM2Vec embedding model: ``python train.py <recipe.yaml>`` or ``accelerate launch train.py <recipe.yaml>``.

Arguments are HfArgumentParser dataclasses — model (`ModelArguments`), data (`DataArguments`), LoRA
(`LoraArguments`), every `TrainingArguments` field plus GradCache and sampler settings
(`ContrastiveTrainingArguments`), and the offline demo's tiny backbone and synthetic data (`DemoArguments`) — given
as ``--snake_case`` flags or as the keys of one YAML file passed alone. Bad input prints ``error: ...`` and exits
with status 2.
"""

from __future__ import annotations

import sys

from transformers import HfArgumentParser

from modeling_vlm2vec.common.cli import parse_dataclasses, run_cli
from modeling_vlm2vec.pipeline import TRAIN_ARGUMENTS, run


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser(TRAIN_ARGUMENTS)
    args = parse_dataclasses(parser, sys.argv[1:] if argv is None else argv)
    return run_cli(lambda: run(*args))


if __name__ == "__main__":
    sys.exit(main())
