"""Where things live: Hub ids versus local paths, and the project's well-known Hub datasets (named once, here)."""

from __future__ import annotations

import os
import re

#: MMEB evaluation data (36 datasets, one config each, split ``test``).
MMEB_EVAL_DATASET = "TIGER-Lab/MMEB-eval"
#: MMEB training data (20 subsets).
MMEB_TRAIN_DATASET = "TIGER-Lab/MMEB-train"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(reference: str | os.PathLike) -> bool:
    """True when ``reference`` reads as a Hub repo id (``owner/name``) and names no existing local path.

    A local path always wins: ``data/eval`` is a folder when it exists here, a Hub id otherwise.
    """
    reference = str(reference)
    return bool(_HUB_ID.match(reference)) and not os.path.exists(reference)


__all__ = ["MMEB_EVAL_DATASET", "MMEB_TRAIN_DATASET", "is_hub_id"]
