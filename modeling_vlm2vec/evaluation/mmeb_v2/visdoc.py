"""MMEB-V2 visual-document tasks: 24 page-retrieval tasks in the BEIR layout, ranked globally with graded qrels.

Each Hub dataset has three configs: ``queries`` (``query-id``, ``query``), ``corpus`` (``corpus-id``, ``image``:
the page, embedded) and ``qrels`` (``query-id``, ``corpus-id``, ``score``). As the official ``vidore_dataset.py``
and ``visrag_dataset.py`` (identical apart from how they name page files on disk): qrels with score <= 0 are
dropped and a repeated pair keeps its highest score; the query text is ``"Find a document image that matches the
given query: " + query`` (no trailing newline), every page ``"<|image_1|> Understand the content of the provided
document image."``; every query ranks the whole corpus; the headline metric is NDCG@5 with linear gain.
"""

from __future__ import annotations

from ...common.errors import DataError
from .data import SetBuilder, TableSource, V2Set, V2Task, input_text

QUERY_INSTRUCTION = "Find a document image that matches the given query:"
PAGE_INSTRUCTION = "Understand the content of the provided document image."


def parse_beir_pages(task: V2Task, source: TableSource, media_root: str | None) -> V2Set:
    """Queries against the page corpus; a qrel naming an unknown page or query raises ``DataError``."""
    corpus_file, corpus = source.read(task, "corpus", task.split, ["corpus-id", "image"])
    qrels_file, qrels = source.read(task, "qrels", task.split, ["query-id", "corpus-id", "score"])
    queries_file, queries = source.read(task, "queries", task.split, ["query-id", "query"])
    builder = SetBuilder(task, local=False)
    page_text = input_text(PAGE_INSTRUCTION, image=True)
    for row, (corpus_id, image) in enumerate(zip(corpus["corpus-id"], corpus["image"])):
        if not isinstance(image, bytes) or not image:
            raise DataError("corpus row has no embedded page image", dataset=task.name, row=row, file=corpus_file)
        if str(corpus_id) in builder.names:
            raise DataError(f"duplicate corpus-id {corpus_id!r}", dataset=task.name, row=row, file=corpus_file)
        builder.candidate(str(corpus_id), page_text, image=image)
    known_pages = set(builder.names)
    grades: dict[str, dict[str, float]] = {}
    for row, (query_id, corpus_id, score) in enumerate(zip(qrels["query-id"], qrels["corpus-id"], qrels["score"])):
        if str(corpus_id) not in known_pages:
            raise DataError(
                f"qrels name corpus-id {corpus_id!r}, not in the corpus", dataset=task.name, row=row, file=qrels_file
            )
        if not isinstance(score, (int, float)):
            raise DataError(f"qrels score must be a number, got {score!r}", dataset=task.name, row=row, file=qrels_file)
        if score > 0:
            pages = grades.setdefault(str(query_id), {})
            pages[str(corpus_id)] = max(pages.get(str(corpus_id), 0.0), float(score))
    for row, (query_id, query) in enumerate(zip(queries["query-id"], queries["query"])):
        if not isinstance(query, str) or not query:
            raise DataError("query must be a non-empty string", dataset=task.name, row=row, file=queries_file)
        if str(query_id) not in grades:
            raise DataError(
                f"query-id {query_id!r} has no relevant page in qrels", dataset=task.name, row=row, file=queries_file
            )
        builder.query(row, input_text(QUERY_INSTRUCTION, query), grades[str(query_id)])
    return builder.build()


# (name, meta-task, Hub repo, split, VLM2Vec-V2.0 NDCG@5 %) in the order of the official report_score_v2.py; repos
# from src/constant/dataset_hf_path.py. The four "-page"/"-doc" OOD tasks use the vidore parser officially. Scores:
# all_scores/v2.0.1/VLM2Vec-V2.0-Qwen2VL-2B.json (the paper's run). Caveat: the two "-page" values (20.9, 11.9) were
# measured before the official loaders switched to the "-fixed" page datasets read here (issue #167 there); the
# repository's later all_scores/v2.1-baselines-visdoc-page-fixed/ run reports 80.3 and 44.7 for them.
# fmt: off
_VISDOC = [
    ("ViDoRe_arxivqa", "ViDoRe-V1", "vidore/arxivqa_test_subsampled_beir", "test", 78.9),
    ("ViDoRe_docvqa", "ViDoRe-V1", "vidore/docvqa_test_subsampled_beir", "test", 37.1),
    ("ViDoRe_infovqa", "ViDoRe-V1", "vidore/infovqa_test_subsampled_beir", "test", 82.7),
    ("ViDoRe_tabfquad", "ViDoRe-V1", "vidore/tabfquad_test_subsampled_beir", "test", 87.8),
    ("ViDoRe_tatdqa", "ViDoRe-V1", "vidore/tatdqa_test_beir", "test", 44.3),
    ("ViDoRe_shiftproject", "ViDoRe-V1", "vidore/shiftproject_test_beir", "test", 61.0),
    ("ViDoRe_syntheticDocQA_artificial_intelligence", "ViDoRe-V1",
     "vidore/syntheticDocQA_artificial_intelligence_test_beir", "test", 89.1),
    ("ViDoRe_syntheticDocQA_energy", "ViDoRe-V1", "vidore/syntheticDocQA_energy_test_beir", "test", 86.3),
    ("ViDoRe_syntheticDocQA_government_reports", "ViDoRe-V1",
     "vidore/syntheticDocQA_government_reports_test_beir", "test", 85.6),
    ("ViDoRe_syntheticDocQA_healthcare_industry", "ViDoRe-V1",
     "vidore/syntheticDocQA_healthcare_industry_test_beir", "test", 91.1),
    ("ViDoRe_esg_reports_human_labeled_v2", "ViDoRe-V2", "vidore/esg_reports_human_labeled_v2", "test", 45.8),
    ("ViDoRe_biomedical_lectures_v2_multilingual", "ViDoRe-V2", "vidore/biomedical_lectures_v2", "test", 44.6),
    ("ViDoRe_economics_reports_v2_multilingual", "ViDoRe-V2", "vidore/economics_reports_v2", "test", 42.3),
    ("ViDoRe_esg_reports_v2_multilingual", "ViDoRe-V2", "vidore/esg_reports_v2", "test", 45.7),
    ("VisRAG_ArxivQA", "VisRAG", "openbmb/VisRAG-Ret-Test-ArxivQA", "train", 76.7),
    ("VisRAG_ChartQA", "VisRAG", "openbmb/VisRAG-Ret-Test-ChartQA", "train", 84.2),
    ("VisRAG_MP-DocVQA", "VisRAG", "openbmb/VisRAG-Ret-Test-MP-DocVQA", "train", 71.8),
    ("VisRAG_SlideVQA", "VisRAG", "openbmb/VisRAG-Ret-Test-SlideVQA", "train", 91.4),
    ("VisRAG_InfoVQA", "VisRAG", "openbmb/VisRAG-Ret-Test-InfoVQA", "train", 85.9),
    ("VisRAG_PlotQA", "VisRAG", "openbmb/VisRAG-Ret-Test-PlotQA", "train", 65.9),
    ("ViDoSeek-page", "VisDoc-OOD", "VLM2Vec/ViDoSeek-page-fixed", "test", 20.9),
    ("ViDoSeek-doc", "VisDoc-OOD", "VLM2Vec/ViDoSeek", "test", 80.3),
    ("MMLongBench-page", "VisDoc-OOD", "VLM2Vec/MMLongBench-page-fixed", "test", 11.9),
    ("MMLongBench-doc", "VisDoc-OOD", "VLM2Vec/MMLongBench-doc", "test", 42.8),
]
# fmt: on

VISDOC_TASKS = [
    V2Task(name, "visdoc", meta, parse_beir_pages, repo, None, split, "global", score)
    for name, meta, repo, split, score in _VISDOC
]
