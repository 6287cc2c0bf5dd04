"""The MMEB registry: dataset counts, paper numbers consistent with the paper's aggregates, subset resolution."""

from collections import Counter

import numpy as np
import pytest

from modeling_vlm2vec.common.errors import DataError
from modeling_vlm2vec.evaluation import PAPER_AGGREGATES, REGISTRY, resolve_subsets
from modeling_vlm2vec.evaluation.mmeb_v1.registry import aggregate_groups

MMEB = [info for info in REGISTRY.values() if info.suite == "mmeb"]


def test_mmeb_has_36_datasets_in_the_papers_split():
    assert len(MMEB) == 36
    assert Counter(info.meta_task for info in MMEB) == {
        "classification": 10,
        "vqa": 10,
        "retrieval": 12,
        "grounding": 4,
    }
    assert Counter(info.split for info in MMEB) == {"IND": 20, "OOD": 16}
    assert all(info.paper is not None for info in MMEB)


def test_per_dataset_paper_numbers_reproduce_table_2():
    # Table 6 (per dataset) and Table 2 (aggregates) are separate tables of the paper; their means must agree
    # up to Table 2's rounding to one decimal.
    groups = aggregate_groups([info.name for info in MMEB])
    assert set(groups) == set(PAPER_AGGREGATES)
    for group, (members, total) in groups.items():
        assert len(members) == total
        mean = np.mean([REGISTRY[name].paper for name in members])
        assert mean == pytest.approx(PAPER_AGGREGATES[group], abs=0.051), group


def test_suites_and_names():
    assert len(resolve_subsets(["all"])) == 36
    assert len(resolve_subsets(["ind"])) == 20 and len(resolve_subsets(["OOD"])) == 16
    assert resolve_subsets(["synthetic"]) == ["SynCLS", "SynVQA", "SynT2I", "SynI2T", "SynGround"]
    # space separated, repeated, duplicates dropped, registry order kept
    assert resolve_subsets(["MSCOCO_t2i ImageNet-1K", "ImageNet-1K,RefCOCO"]) == [
        "ImageNet-1K",
        "MSCOCO_t2i",
        "RefCOCO",
    ]


def test_unknown_subset_names_the_culprit():
    with pytest.raises(DataError, match="ImageNet_1K.*did you mean ImageNet-1K"):
        resolve_subsets(["ImageNet_1K"])


def test_partial_groups_report_their_size():
    groups = aggregate_groups(["ImageNet-1K", "RefCOCO", "SynCLS"])
    assert groups["classification"] == (["ImageNet-1K", "SynCLS"], 11)
    assert groups["grounding"] == (["RefCOCO"], 5)
    assert groups["OOD"] == (["RefCOCO"], 16)
    assert groups["Overall"] == (["ImageNet-1K", "RefCOCO", "SynCLS"], 41)
    assert "vqa" not in groups
