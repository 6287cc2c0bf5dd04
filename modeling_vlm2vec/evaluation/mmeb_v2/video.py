"""MMEB-V2 video tasks: classification and retrieval parsers, and the 18-task video registry.

Videos are read as pre-extracted frames (the official ``video-tasks/frames/...`` archives under the media root), 8
frames sampled per video as the official ``process_video_frames``; nothing decodes video files. Prompts follow
``src/data/eval_dataset/{video_classification_datasets,ssv2,msrvtt,msvd,didemo,youcook2,vatex}_dataset.py``;
the QA and moment-retrieval parsers are in :mod:`.v2_video_qa`.

The globally ranked classification tasks (HMDB51, UCF101, K700, Breakfast) rank every class label of the dataset, as
the official loader: the rows' labels plus the fixed label lists of the official ``VIDEOCLS_LABEL_MAPPING``, kept in
``video_labels.json`` beside this file.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

from .data import SetBuilder, TableSource, V2Set, V2Task, input_text, list_value, video_frames
from .data import text_value as _str
from .video_qa import (
    parse_activitynetqa,
    parse_egoschema,
    parse_moment_retrieval,
    parse_momentseeker,
    parse_mvbench,
    parse_nextqa,
    parse_videomme,
)

#: Official ``DATASET_INSTRUCTION`` (video_classification_utils.py), keyed by the loader's dataset name.
CLASSIFICATION_INSTRUCTIONS = {
    "Kinetics-700": "Recognize the category of the video content.",
    "SmthSmthV2": "What actions or object interactions are being performed by the person in the video?",
    "UCF101": "What activities or sports are being performed by the person in the video?",
    "HMDB51": "What actions or objects interactions are the person in the video doing?",
    "Breakfast": "Recognize the breakfast type that the person is cooking in the video. ",
}
VIDEO_INSTRUCTION = "Understand the content of the provided video."
#: Official ``TASK_INST_QRY`` of each text-to-video retrieval loader.
RETRIEVAL_INSTRUCTIONS = {
    "MSR-VTT": "Find a video that contains the following visual content:",
    "MSVD": "Find the video snippet that corresponds to the given summary:",
    "DiDeMo": "Find a video that includes the following described scenes:",
    "YouCook2": "Find a video that demonstrates the following action while making a recipe:",
    "VATEX": "Select a video that fits the description provided:",
}


@cache
def class_labels() -> dict[str, list[str]]:
    """The official label list of each globally ranked video classification dataset, by the loader's name."""
    return json.loads((Path(__file__).parent / "video_labels.json").read_text(encoding="utf-8"))


def _instruction(task: V2Task) -> str:
    return CLASSIFICATION_INSTRUCTIONS[task.hub_name or task.name]


def parse_video_classification(task: V2Task, source: TableSource, media_root: str | None) -> V2Set:
    """Video query, label texts as candidates, ranked globally over every label (rows' and the official list)."""
    file, rows = source.read(task, task.config, task.split, ["video_id", "pos_text"])
    builder = SetBuilder(task, local=False)
    for label in [x for x in rows["pos_text"] if isinstance(x, str)] + class_labels()[task.hub_name or task.name]:
        builder.candidate(label, label)
    text = input_text(_instruction(task), video=True)
    for row, (video_id, label) in enumerate(zip(rows["video_id"], rows["pos_text"])):
        frames = video_frames(media_root, task, str(video_id), row)
        builder.query(row, text, {_str(label, "pos_text", task, row): 1.0}, frames=frames)
    return builder.build()


def parse_ssv2(task: V2Task, source: TableSource, media_root: str | None) -> V2Set:
    """Something-Something-v2 multiple choice: each video ranks its own ``neg_text`` list (positive included)."""
    file, rows = source.read(task, task.config, task.split, ["video_id", "pos_text", "neg_text"])
    builder = SetBuilder(task, local=True)
    text = input_text(_instruction(task), video=True)
    for row, (video_id, label, options) in enumerate(zip(rows["video_id"], rows["pos_text"], rows["neg_text"])):
        if task.max_rows is not None and row >= task.max_rows:
            break
        options = [_str(o, "neg_text element", task, row) for o in list_value(options, "neg_text", task, row)]
        for option in options:
            builder.candidate(option, option)
        frames = video_frames(media_root, task, str(video_id), row)
        builder.query(row, text, {_str(label, "pos_text", task, row): 1.0}, options, frames=frames)
    return builder.build()


# Per retrieval loader: (columns, row -> (video name, frame folder, caption)).
_RETRIEVAL_ROWS = {
    "MSR-VTT": (["video_id", "video", "caption"], lambda r: (str(r[0]), str(r[0]), r[2])),
    "MSVD": (["video_id", "video", "caption"], lambda r: (str(r[0]), str(r[0]), _first(r[2]))),
    "DiDeMo": (["video", "caption"], lambda r: (_stem(r[0]),) * 2 + (r[1],)),
    "YouCook2": (["id", "video_path", "sentence"], lambda r: (str(r[0]), str(r[0]), r[2])),
    "VATEX": (["videoID", "enCap"], lambda r: (str(r[0]), str(r[0]), _first(r[1]))),
}


def _first(captions: object) -> object:
    return captions[0] if isinstance(captions, list) and captions else None


def _stem(path: object) -> str:
    return os.path.splitext(os.path.basename(str(path)))[0]


def parse_video_retrieval(task: V2Task, source: TableSource, media_root: str | None) -> V2Set:
    """Text query (instruction + caption, no video), videos as candidates named by video id, ranked globally."""
    columns, unpack = _RETRIEVAL_ROWS[task.name]
    file, rows = source.read(task, task.config, task.split, columns)
    builder = SetBuilder(task, local=False)
    video_text = input_text(VIDEO_INSTRUCTION, video=True)
    for row, values in enumerate(zip(*(rows[c] for c in columns))):
        name, folder, caption = unpack(values)
        caption = _str(caption, "caption", task, row)
        builder.candidate(name, video_text, frames=video_frames(media_root, task, folder, row))
        builder.query(row, input_text(RETRIEVAL_INSTRUCTIONS[task.name], caption), {name: 1.0})
    return builder.build()


_FRAMES = "video-tasks/frames/"
# (name, meta-task, parser, Hub repo, config, split, frame folder, eval type, VLM2Vec-V2.0 hit@1 %), in the order
# of the official report_score_v2.py; repos from src/constant/dataset_hf_path.py, folders from video.yaml.
# fmt: off
_VIDEO = [
    ("K700", "classification", parse_video_classification, "VLM2Vec/Kinetics-700", None, "test",
     "video_cls/K700", "global", 38.2),
    ("SmthSmthV2", "classification", parse_ssv2, "VLM2Vec/SmthSmthV2", None, "test", "video_cls/SSv2", "local", 43.0),
    ("HMDB51", "classification", parse_video_classification, "VLM2Vec/HMDB51", None, "test",
     "video_cls/HMDB51", "global", 40.2),
    ("UCF101", "classification", parse_video_classification, "VLM2Vec/UCF101", None, "test",
     "video_cls/UCF101", "global", 60.0),
    ("Breakfast", "classification", parse_video_classification, "VLM2Vec/Breakfast", None, "test",
     "video_cls/Breakfast", "global", 14.8),
    ("MVBench", "qa", parse_mvbench, "VLM2Vec/MVBench", None, "train", "video_qa/MVBench", "local", 33.6),
    ("Video-MME", "qa", parse_videomme, "VLM2Vec/Video-MME", None, "test", "video_qa/Video-MME", "local", 30.8),
    ("NExTQA", "qa", parse_nextqa, "VLM2Vec/NExTQA", "MC", "test", "video_qa/NExTQA", "local", 20.9),
    ("EgoSchema", "qa", parse_egoschema, "VLM2Vec/EgoSchema", "Subset", "test", "video_qa/EgoSchema", "local", 35.0),
    ("ActivityNetQA", "qa", parse_activitynetqa, "VLM2Vec/ActivityNetQA", None, "test",
     "video_qa/ActivityNetQA", "local", 53.0),
    ("DiDeMo", "retrieval", parse_video_retrieval, "VLM2Vec/DiDeMo", None, "test", "video_ret/DiDeMo", "global", 30.0),
    ("MSR-VTT", "retrieval", parse_video_retrieval, "VLM2Vec/MSR-VTT", "test_1k", "test",
     "video_ret/MSR-VTT", "global", 27.8),
    ("MSVD", "retrieval", parse_video_retrieval, "VLM2Vec/MSVD", None, "test", "video_ret/MSVD", "global", 47.3),
    ("VATEX", "retrieval", parse_video_retrieval, "VLM2Vec/VATEX", None, "test", "video_ret/VATEX", "global", 26.2),
    ("YouCook2", "retrieval", parse_video_retrieval, "lmms-lab/YouCook2", None, "val",
     "video_ret/YouCook2", "global", 10.6),
    ("QVHighlight", "moment_retrieval", parse_moment_retrieval, "VLM2Vec/QVHighlight", None, "test",
     "video_mret/QVHighlight", "local", 49.7),
    ("Charades-STA", "moment_retrieval", parse_moment_retrieval, "VLM2Vec/Charades-STA", None, "test",
     "video_mret/Charades_STA", "local", 20.1),
    ("MomentSeeker", "moment_retrieval", parse_momentseeker, "VLM2Vec/MomentSeeker", None, "test",
     "video_mret/MomentSeeker", "local", 42.9),
]
# fmt: on

VIDEO_TASKS = [
    V2Task(
        name,
        "video",
        meta,
        parser,
        repo,
        config,
        split,
        eval_type,
        score,
        media=_FRAMES + folder,
        hub_name="Kinetics-700" if name == "K700" else None,
        max_rows=1000 if name == "SmthSmthV2" else None,  # num_sample_per_subset: 1000 in video.yaml
    )
    for name, meta, parser, repo, config, split, folder, eval_type, score in _VIDEO
]
