"""Offline MMEB-V2 fixtures: tables in each official schema, laid out as a local mirror, with media and frames.

:func:`write_v2_suite` writes one task per official parser under ``<root>/data`` (the mirror layout
``<owner>/<repo>/[<config>/]<split>.parquet`` that ``--dataset_name`` reads) and their images and pre-extracted
frames under ``<root>/media``. Items carry ``[<int>]`` keys (in texts, image names, frame-folder names, or a page's
red value), so under :class:`~modeling_vlm2vec.demo.eval_fixtures.KeyedEncoder` every score is known by
construction; the suite returns them (``expected``) beside the paths.
"""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .eval_fixtures import write_image

INSTRUCT = "ziyjiang/MMEB_Test_Instruct"


def write_table(data_root: str | os.PathLike, repo: str, config: str | None, split: str, rows: list[dict]) -> Path:
    """Write ``rows`` to ``<data_root>/<repo>/[<config>/]<split>.parquet`` (columns in the first row's order)."""
    path = Path(data_root) / repo / (config or "") / f"{split}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({col: [row[col] for row in rows] for col in rows[0]}), path)
    return path


def write_frames(media_root: str | os.PathLike, rel_dir: str, count: int = 10) -> Path:
    """``count`` tiny JPEG frames ``<rel_dir>/frame_<i>.jpg`` (i = 1..count), a pre-extracted video. Frame ``i`` is
    red ``20 * i``; green and blue follow the folder name, so different videos have different pixels."""
    folder = Path(media_root) / rel_dir
    folder.mkdir(parents=True, exist_ok=True)
    tint = zlib.crc32(rel_dir.encode("utf-8"))
    for i in range(1, count + 1):
        Image.new("RGB", (4, 4), (20 * i % 256, tint % 256, tint // 256 % 256)).save(folder / f"frame_{i}.jpg")
    return folder


def page_bytes(red: int) -> bytes:
    """PNG bytes of a small page whose first pixel's red value is ``red`` (its KeyedEncoder key)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (red, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_tasks(data: Path, media: Path) -> dict[str, float]:
    images = media / "image-tasks"
    for rel in ("cls/q[1].png", "cls/q[2].png", "qa/q.png", "vis/c[1].png", "vis/c[2].png", "vis/c[7].png"):
        write_image(images, rel)
    write_image(images, "ref/scene.png")
    cls = [
        {"qry_inst": "<|image_1|> Represent the given image for classification.", "qry_text": "",
         "qry_img_path": f"cls/q[{k}].png", "tgt_inst": "Represent the class label: ",
         "tgt_text": [f"label [{pos}]", "label [2]" if pos != 2 else "label [1]", "label [3]"],
         "tgt_img_path": ["", "", ""]}
        for k, pos in ((1, 1), (2, 5))  # the second positive carries another key: wrong
    ]  # fmt: skip
    write_table(data, INSTRUCT, "ImageNet-1K", "test", cls)
    qa = [
        {"qry_inst": "<|image_1|> Represent the given image with the following question:", "qry_text": "what [3]?",
         "qry_img_path": "qa/q.png", "tgt_inst": "", "tgt_text": ["three [3]", "four [4]"], "tgt_img_path": ["", ""]}
    ]  # fmt: skip
    write_table(data, INSTRUCT, "OK-VQA", "test", qa)
    visdial = [
        {"qry_inst": "Represent the given dialogue about an image, which is used for image retrieval:",
         "qry_text": f"Q: dog [{k}]", "qry_img_path": "", "tgt_inst": "<|image_1|> Represent the given image.",
         "tgt_text": ["", ""], "tgt_img_path": [f"vis/c[{pos}].png", "vis/c[7].png"]}
        for k, pos in ((1, 1), (2, 2), (7, 1))  # the last query's key is a negative's: wrong
    ]  # fmt: skip
    write_table(data, INSTRUCT, "VisDial", "test", visdial)
    matching = [
        {"qry_inst": "<|image_1|> Select the portion of the image that follows the language expressions:",
         "qry_text": f"obj [{k}]", "qry_img_path": "ref/scene.png",
         "tgt_inst": "<|image_1|> Select the portion of the image that follows the language expressions: ",
         "tgt_text": [f'"thing [{pos}]"', '"thing [2]"'], "tgt_img_path": ["ref/scene.png", "ref/scene.png"]}
        for k, pos in ((1, 1), (2, 4))
    ]  # fmt: skip
    write_table(data, INSTRUCT, "RefCOCO-Matching", "test", matching)
    write_image(images, "i2t/q[5].png")
    i2t = [
        {"qry_inst": "<|image_1|> Find an image caption describing the given everyday image.", "qry_text": "",
         "qry_img_path": "i2t/q[5].png", "tgt_inst": "", "tgt_text": ["cap [5]", "cap [6]"], "tgt_img_path": ["", ""]}
    ]  # fmt: skip
    write_table(data, INSTRUCT, "MSCOCO_i2t", "test", i2t)
    for rel in ("nights/q[2].png", "nights/t[2].png", "nights/t[3].png"):
        write_image(images, rel)
    nights = [
        {"qry_inst": "<|image_1|> Find a day-to-day image that looks similar to the provided image.", "qry_text": "",
         "qry_img_path": "nights/q[2].png", "tgt_inst": "<|image_1|> Represent the given image.",
         "tgt_text": ["", ""], "tgt_img_path": ["nights/t[2].png", "nights/t[3].png"]}
    ]  # fmt: skip
    write_table(data, INSTRUCT, "NIGHTS", "test", nights)
    return {
        "ImageNet-1K": 0.5, "OK-VQA": 1.0, "VisDial": 2 / 3, "RefCOCO-Matching": 0.5, "MSCOCO_i2t": 1.0, "NIGHTS": 1.0
    }  # fmt: skip


def _visdoc(data: Path) -> dict[str, float]:
    repo = "vidore/arxivqa_test_subsampled_beir"
    reds = {"p1": 1, "p2": 3, "p3": 2, "p4": 9}
    corpus = [{"corpus-id": cid, "image": {"bytes": page_bytes(red), "path": None}} for cid, red in reds.items()]
    write_table(data, repo, "corpus", "test", corpus)
    write_table(data, repo, "queries", "test", [{"query-id": q, "query": f"chart [{q}]"} for q in (1, 2)])
    qrels = [(1, "p1", 2), (1, "p4", 0), (2, "p2", 1), (2, "p3", 2), (2, "p3", 1)]  # score 0 dropped; max kept
    write_table(data, repo, "qrels", "test", [{"query-id": q, "corpus-id": c, "score": s} for q, c, s in qrels])
    # Query 2: p3 (grade 2) scores 1 -> rank 1; p2 (grade 1) ties at 0 with p1 and p4 -> rank 4 (ties count against).
    ndcg2 = (2 + 1 / _log2(5)) / (2 + 1 / _log2(3))
    repo = "openbmb/VisRAG-Ret-Test-ArxivQA"  # VisRAG: page ids are file names, split "train"
    pages = {"1907.01234_fig[3].png": 3, "2001.0042_fig[4].png": 4}
    corpus = [{"corpus-id": cid, "image": {"bytes": page_bytes(red), "path": None}} for cid, red in pages.items()]
    write_table(data, repo, "corpus", "train", corpus)
    write_table(data, repo, "queries", "train", [{"query-id": f"q{k}", "query": f"plot [{k}]"} for k in (3, 7)])
    qrels = [{"query-id": "q3", "corpus-id": "1907.01234_fig[3].png", "score": 1}]
    qrels.append({"query-id": "q7", "corpus-id": "2001.0042_fig[4].png", "score": 1})
    write_table(data, repo, "qrels", "train", qrels)
    # q7's key matches no page: its page ties with the other one at 0 and ranks 2nd.
    return {"ViDoRe_arxivqa": (1.0 + ndcg2) / 2, "VisRAG_ArxivQA": (1.0 + 1 / _log2(3)) / 2}


def _log2(x: float) -> float:
    import math

    return math.log2(x)


def _video_tasks(data: Path, media: Path) -> dict[str, float]:
    frames = "video-tasks/frames/"
    for k in (1, 2, 3):
        write_frames(media, f"{frames}video_ret/MSR-VTT/vid[{k}]")
    rows = [
        {"video_id": f"vid[{k}]", "video": f"vid[{k}].mp4", "caption": f"a clip [{c}]"}
        for k, c in ((1, 1), (2, 5), (3, 3))
    ]
    write_table(data, "VLM2Vec/MSR-VTT", "test_1k", "test", rows)
    for folder in ("MSVD/msvd[1]", "MSVD/msvd[2]", "DiDeMo/dd[4]", "DiDeMo/dd[5]", "YouCook2/yc[2]", "VATEX/vx[3]"):
        write_frames(media, f"{frames}video_ret/{folder}", count=2)
    rows = [
        {"video_id": f"msvd[{k}]", "video": f"msvd[{k}].avi", "caption": c}
        for k, c in ((1, ["a [1]", "b"]), (2, ["b [9]"]))
    ]
    write_table(data, "VLM2Vec/MSVD", None, "test", rows)
    rows = [{"video": f"videos/dd[{k}].mp4", "caption": f"scene [{c}]"} for k, c in ((4, 4), (5, 6))]
    write_table(data, "VLM2Vec/DiDeMo", None, "test", rows)
    rows = [{"id": "yc[2]", "video_path": "val/101/yc.mp4", "sentence": "cut [2]"}]
    write_table(data, "lmms-lab/YouCook2", None, "val", rows)
    write_table(data, "VLM2Vec/VATEX", None, "test", [{"videoID": "vx[3]", "enCap": ["cook [3]", "other [1]"]}])
    for k in (1, 2):
        write_frames(media, f"{frames}video_cls/HMDB51/h[{k}]", count=3)
    rows = [{"video_id": f"h[{k}]", "pos_text": label} for k, label in ((1, "run [1]"), (2, "jump [3]"))]
    write_table(data, "VLM2Vec/HMDB51", None, "test", rows)
    write_frames(media, f"{frames}video_cls/SSv2/s[4]")
    rows = [{"video_id": "s[4]", "pos_text": "push [4]", "neg_text": ["pull [5]", "push [4]"]}]
    write_table(data, "VLM2Vec/SmthSmthV2", None, "test", rows)
    write_frames(media, f"{frames}video_qa/Video-MME/mme1")
    rows = [{"question": "color [2]?", "videoID": "mme1", "options": ["A. red [1]", "B. blue [2]", "C. x", "D. y"],
             "answer": "B", "question_id": "q1", "domain": "d", "sub_category": "s"}]  # fmt: skip
    write_table(data, "VLM2Vec/Video-MME", None, "test", rows)
    write_frames(media, f"{frames}video_qa/NExTQA/77")
    rows = [{"video": 77, "question": "why [3]", "answer": 1, "qid": 0, "type": "CW",
             "a0": "no [1]", "a1": "yes [3]", "a2": "a2", "a3": "a3", "a4": "a4"}]  # fmt: skip
    write_table(data, "VLM2Vec/NExTQA", "MC", "test", rows)
    write_frames(media, f"{frames}video_qa/EgoSchema/ego1")
    rows = [{"video_idx": "ego1", "question": "what [4]?", "answer": "0", "question_idx": "0",
             "option": ["A. cook [4]", "B. eat [5]"]}]  # fmt: skip
    write_table(data, "VLM2Vec/EgoSchema", "Subset", "test", rows)
    write_frames(media, f"{frames}video_qa/ActivityNetQA/v_an1")
    rows = [{"video_name": "an1", "question": "is it day", "answer": "yes", "question_id": "a1"}]
    write_table(data, "VLM2Vec/ActivityNetQA", None, "test", rows)
    from ..evaluation.mmeb_v2.video_qa import MVBENCH_SUBSETS

    for i, subset in enumerate(MVBENCH_SUBSETS):
        write_frames(media, f"{frames}video_qa/MVBench/{subset}/v{i}.mp4", count=2)
        answer = "right [6]" if i % 2 == 0 else "other [8]"  # odd subsets: the answer's key is not the question's
        rows = [
            {"question": "which [6]", "video": f"v{i}.mp4", "candidates": ["right [6]", "other [8]"], "answer": answer}
        ]
        write_table(data, "VLM2Vec/MVBench", subset, "train", rows)
    qv = f"{frames}video_mret/QVHighlight/"
    for clip in ("query", "positive[1]", "negative_a[7]", "negative_b[8]"):
        write_frames(media, qv + "vq/" + clip, count=3)
    write_table(data, "VLM2Vec/QVHighlight", None, "test", [{"query": "scene [1]", "video_path": "x/vq.mp4"}])
    ms = f"{frames}video_mret/MomentSeeker/"
    for name in ("m_c[2]", "m_c[3]", "m_c[9]"):
        write_frames(media, ms + "video_frames/" + name, count=3)
    write_image(media / ms, "query_shot[3].jpg")
    rows = [
        {"query": "find [2]", "positive_frames": [{"output_path": "m/c[2].mp4"}],
         "negative_frames": [{"output_path": "m/c[9].mp4"}], "input_frames": ""},
        {"query": "find it", "positive_frames": [{"output_path": "m/c[9].mp4"}],
         "negative_frames": [{"output_path": "m/c[3].mp4"}], "input_frames": "shot[3].jpg"},
    ]  # fmt: skip
    write_table(data, "VLM2Vec/MomentSeeker", None, "test", rows)
    return {
        "MSR-VTT": 2 / 3, "MSVD": 0.5, "DiDeMo": 0.5, "YouCook2": 1.0, "VATEX": 1.0, "HMDB51": 0.5,
        "SmthSmthV2": 1.0, "Video-MME": 1.0, "NExTQA": 1.0, "EgoSchema": 1.0, "ActivityNetQA": 0.0,
        "MVBench": 0.5, "QVHighlight": 1.0, "MomentSeeker": 0.5,
    }  # fmt: skip


def write_v2_suite(root: str | os.PathLike) -> dict:
    """One task per official parser; returns ``{"data", "media", "expected": {task: headline score}}``."""
    root = Path(root)
    data, media = root / "data", root / "media"
    expected = {**_image_tasks(data, media), **_visdoc(data), **_video_tasks(data, media)}
    return {"data": data, "media": media, "expected": expected}
