"""Hard-negative mining with a teacher model (``mine_hard_negatives.py``): unique items encoded once into a resumable
cache across processes, each row's negatives picked from a candidate pool by teacher score with false-negative
filters, written as an MMEB-train set plus the data config that trains on it."""

from .miner import MiningArguments, MiningPlan, check_plan_prompts, mine_hard_negatives, prepare_mining
from .selection import SelectionRule, select_negatives

__all__ = [
    "MiningArguments",
    "MiningPlan",
    "SelectionRule",
    "check_plan_prompts",
    "mine_hard_negatives",
    "prepare_mining",
    "select_negatives",
]
