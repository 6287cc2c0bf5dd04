"""MMEB-V2 video QA and moment-retrieval parsers (all ranked locally: each query against its own candidates).

Prompts follow the official ``src/data/eval_dataset/{videomme,nextqa,egoschema,mvbench,activitynetqa}_dataset.py``
(``process_query``: ``"<video> " + prompt + " " + question``, and ``qa_template`` for NExTQA and MVBench) and
``moment_retrieval_datasets.py`` / ``momentseeker_dataset.py``, character for character.
"""

from __future__ import annotations

from pathlib import Path

from ...common.errors import DataError
from .data import VIDEO_PLACEHOLDER as _VIDEO
from .data import (
    SetBuilder,
    TableSource,
    V2Set,
    V2Task,
    input_text,
    list_value,
    media_file,
    media_folder,
    video_frames,
)
from .data import text_value as _str

QA_PROMPT = (
    "Given a video and a question, select the most accurate answer from the provided candidates. "
    "Return only the exact text of your chosen answer. Question: "
)
_LETTERS = ["A", "B", "C", "D"]
#: The 20 MVBench configs, concatenated in this order (official ``subset_meta``).
MVBENCH_SUBSETS = (
    "episodic_reasoning action_sequence action_prediction action_antonym fine_grained_action unexpected_action "
    "object_existence object_interaction object_shuffle moving_direction action_localization scene_transition "
    "action_count moving_count moving_attribute state_change fine_grained_pose character_order "
    "egocentric_navigation counterfactual_inference"
).split()
MOMENT_QUERY = "Find the clip that corresponds to the described scene in the given video:"
MOMENTSEEKER_QUERY_TEXT = "Find the clip that corresponds to the given text:"
MOMENTSEEKER_QUERY_IMAGE = "Select the video clip that aligns with the given text and image:"
MOMENTSEEKER_QUERY_VIDEO = "Find the clip that corresponds to the given sentence and video segment:"
CLIP_INSTRUCTION = "Understand the content of the provided video."
MOMENTSEEKER_CLIP_INSTRUCTION = "Understand the content of the provided video clip."


def _qa_query(question: str) -> str:
    return f"{_VIDEO} {QA_PROMPT} {question}"


def _qa_template(question: str, candidates: list[str], answer: str) -> tuple[str, list[str], str]:
    """Official ``qa_template``: options appended as ``(A) ...`` lines; the answer in the same form."""
    options = [f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(candidates)]
    answer_index = candidates.index(answer) if answer in candidates else -1
    text = (f"{question}\nOptions:\n" + "".join(o + "\n" for o in options)).rstrip()
    return text, options, f"({chr(ord('A') + answer_index)}) {answer}"


def _after_letter(option: str) -> str:
    return option[option.find(". ") :].strip(". ")  # official: o[o.find('. '):].strip('. ')


def _multiple_choice(task, source, media_root, columns, unpack, builder, config=None, offset=0) -> int:
    """Add one table's rows to ``builder``; ``unpack(values)`` -> (query text, frame folder, [(name, text)], answer
    name). Returns the number of rows read."""
    file, rows = source.read(task, config or task.config, task.split, columns)
    for i, values in enumerate(zip(*(rows[c] for c in columns))):
        row = offset + i
        try:
            text, folder, candidates, answer = unpack(values)
        except (TypeError, ValueError, IndexError, AttributeError) as exc:
            raise DataError(
                f"malformed row ({type(exc).__name__}: {exc})", dataset=task.name, row=row, file=file
            ) from exc
        for name, cand_text in candidates:
            builder.candidate(_str(name, "option", task, row), _str(cand_text, "option", task, row))
        frames = video_frames(media_root, task, folder, row)
        builder.query(row, text, {answer: 1.0}, [name for name, _ in candidates], frames=frames)
    return len(rows[columns[0]])


def _parse(task, source, media_root, columns, unpack) -> V2Set:
    builder = SetBuilder(task, local=True)
    _multiple_choice(task, source, media_root, columns, unpack, builder)
    return builder.build()


def parse_videomme(task: V2Task, source: TableSource, media_root: str | None) -> V2Set:
    def unpack(v):
        question, video_id, options, answer = v
        text = _qa_query(question + "\n" + "\n".join(options))
        return text, str(video_id), [(o, _after_letter(o)) for o in options], options[_LETTERS.index(answer)]

    return _parse(task, source, media_root, ["question", "videoID", "options", "answer"], unpack)


def parse_nextqa(task: V2Task, source: TableSource, media_root: str | None) -> V2Set:
    def unpack(v):
        video, question, answer, *options = v
        text, _, _ = _qa_template(_qa_query(question), options, options[answer])
        return text, str(video), [(o, o) for o in options], options[answer]

    columns = ["video", "question", "answer", "a0", "a1", "a2", "a3", "a4"]
    return _parse(task, source, media_root, columns, unpack)


def parse_egoschema(task: V2Task, source: TableSource, media_root: str | None) -> V2Set:
    def unpack(v):
        video, question, answer, options = v
        text = _qa_query(question + " ".join(options))  # sic: no space between the question and option A
        return text, str(video), [(o, _after_letter(o)) for o in options], options[int(answer)]

    columns = ["video_idx", "question", "answer", "option"]
    return _parse(task, source, media_root, columns, unpack)


def parse_activitynetqa(task: V2Task, source: TableSource, media_root: str | None) -> V2Set:
    def unpack(v):
        video_name, question, answer = v
        return _qa_query(question + "? (A) yes; (B) no."), f"v_{video_name}", [("yes", "yes"), ("no", "no")], answer

    columns = ["video_name", "question", "answer"]
    return _parse(task, source, media_root, columns, unpack)


def parse_mvbench(task: V2Task, source: TableSource, media_root: str | None) -> V2Set:
    """The 20 configs in official order; frames under ``<subset>/<video>``; options and answer as ``(A) ...``."""
    builder, offset = SetBuilder(task, local=True), 0
    for subset in MVBENCH_SUBSETS:

        def unpack(v, subset=subset):
            question, video, candidates, answer = v
            text, options, answer = _qa_template(_qa_query(question), list(candidates), answer)
            return text, f"{subset}/{video}", [(o, o) for o in options], answer

        columns = ["question", "video", "candidates", "answer"]
        offset += _multiple_choice(task, source, media_root, columns, unpack, builder, subset, offset)
    return builder.build()


def parse_moment_retrieval(task: V2Task, source: TableSource, media_root: str | None) -> V2Set:
    """QVHighlight / Charades-STA: ``<video>/query`` frames plus the text; candidates = the other clip folders."""
    file, rows = source.read(task, task.config, task.split, ["query", "video_path"])
    builder = SetBuilder(task, local=True)
    clip_text = input_text(CLIP_INSTRUCTION, video=True)
    for row, (query, video_path) in enumerate(zip(rows["query"], rows["video_path"])):
        video = Path(_str(video_path, "video_path", task, row)).stem
        query_frames = video_frames(media_root, task, f"{video}/query", row)
        folder = media_folder(media_root, task, video, row)
        clips = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != "query")
        positives = [c for c in clips if c.startswith("positive")]
        if len(positives) != 1:
            raise DataError(
                f"expected one positive* clip folder, found {len(positives)}",
                dataset=task.name,
                row=row,
                file=str(folder),
            )
        names = [f"{video}/{clip}" for clip in clips]
        for name in names:
            builder.candidate(name, clip_text, frames=video_frames(media_root, task, name, row))
        text = input_text(MOMENT_QUERY, _str(query, "query", task, row), video=True)
        builder.query(row, text, {f"{video}/{positives[0]}": 1.0}, names, frames=query_frames)
    return builder.build()


def _clip_name(path: object) -> str:
    return str(path).replace("/", "_").split(".mp4")[0]


def parse_momentseeker(task: V2Task, source: TableSource, media_root: str | None) -> V2Set:
    """Text, image+text or video+text queries; clip folders ``video_frames/<name>`` with every saved frame."""
    columns = ["query", "positive_frames", "negative_frames", "input_frames"]
    file, rows = source.read(task, task.config, task.split, columns)
    builder = SetBuilder(task, local=True)
    clip_text = input_text(MOMENTSEEKER_CLIP_INSTRUCTION, video=True)
    for row, (query, positives, negatives, given) in enumerate(zip(*(rows[c] for c in columns))):
        query, given = _str(query, "query", task, row), _str(given or "", "input_frames", task, row)
        image, frames = None, ()
        if given.endswith(".mp4"):
            text = input_text(MOMENTSEEKER_QUERY_VIDEO, query, video=True)
            frames = video_frames(media_root, task, f"video_frames/{_clip_name(given)}", row, num_frames=None)
        elif given.endswith(".jpg"):
            text = input_text(MOMENTSEEKER_QUERY_IMAGE, query, image=True)
            image = media_file(media_root, task, f"query_{given}", row)
        else:
            text = input_text(MOMENTSEEKER_QUERY_TEXT, query)
        try:
            pos = [_clip_name(entry["output_path"]) for entry in list_value(positives, "positive_frames", task, row)]
            neg = [_clip_name(entry["output_path"]) for entry in negatives or []]
        except (TypeError, KeyError) as exc:
            raise DataError(f"clip entries need an output_path ({exc})", dataset=task.name, row=row, file=file) from exc
        for name in pos + neg:
            clip = video_frames(media_root, task, f"video_frames/{name}", row, num_frames=None)
            builder.candidate(name, clip_text, frames=clip)
        builder.query(row, text, dict.fromkeys(pos, 1.0), pos + neg, image=image, frames=frames)
    return builder.build()
