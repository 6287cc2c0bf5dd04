"""Train a VLM2Vec embedding model: ``python train.py <recipe.yaml>`` or ``accelerate launch train.py <recipe.yaml>``.

Arguments are HfArgumentParser dataclasses — model (`ModelArguments`), data (`DataArguments`), LoRA
(`LoraArguments`), every `TrainingArguments` field plus GradCache and sampler settings
(`ContrastiveTrainingArguments`), and the offline demo's tiny backbone and synthetic data (`DemoArguments`) — given
as ``--snake_case`` flags or as the keys of one YAML file passed alone. Bad input prints ``error: ...`` and exits
with status 2.
"""

from __future__ import annotations

import logging
import sys

from transformers import HfArgumentParser

from modeling_vlm2vec.common.cli import parse_dataclasses, run_cli
from modeling_vlm2vec.pipeline import TRAIN_ARGUMENTS, run


def main(argv: list[str] | None = None) -> int:
    # Our own progress lines (rows kept and dropped per source, evaluation steps) at INFO; other libraries' at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("modeling_vlm2vec").setLevel(logging.INFO)
    parser = HfArgumentParser(TRAIN_ARGUMENTS)
    return run_cli(lambda: run(*parse_dataclasses(parser, sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
