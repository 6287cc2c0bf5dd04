"""MMEB-V2 image tasks: the 36 MMEB datasets in the V2 instruct format (``ziyjiang/MMEB_Test_Instruct``).

Rows: ``qry_inst``, ``qry_text``, ``qry_img_path``, ``tgt_inst``, ``tgt_text`` (list), ``tgt_img_path`` (list),
positive at index 0; image paths relative to ``image-tasks/`` under the media root. Every image task is ranked
locally (each query against its own candidates). The five parsers reproduce the official
``src/data/eval_dataset/image_{cls,qa,i2t,t2i,i2i_vg}*.py`` prompts, whitespace and candidate names exactly.
"""

from __future__ import annotations

from ...common.errors import DataError
from .data import IMAGE_PLACEHOLDER, SetBuilder, TableSource, V2Set, V2Task, input_text, list_value, media_file
from .data import text_value as _str

IMAGE_REPO = "ziyjiang/MMEB_Test_Instruct"
_COLUMNS = ["qry_inst", "qry_text", "qry_img_path", "tgt_inst", "tgt_text", "tgt_img_path"]


def _v1_fix(text: str) -> str:
    # Official: "to stay consistent with v1 eval".
    return text.replace(" \n", "\n")


def _rows(task: V2Task, source: TableSource):
    file, columns = source.read(task, task.config, task.split, _COLUMNS)
    for row, values in enumerate(zip(*(columns[c] for c in _COLUMNS))):
        qry_inst, qry_text, qry_img, tgt_inst = (_str(v, c, task, row) for v, c in zip(values[:4], _COLUMNS))
        tgt_texts = [_str(t, "tgt_text element", task, row) for t in list_value(values[4], "tgt_text", task, row)]
        tgt_imgs = [
            _str(p, "tgt_img_path element", task, row) for p in list_value(values[5], "tgt_img_path", task, row)
        ]
        if len(tgt_texts) != len(tgt_imgs):
            raise DataError("tgt_text and tgt_img_path have different lengths", dataset=task.name, row=row, file=file)
        yield row, qry_inst, qry_text, qry_img, tgt_inst, tgt_texts, tgt_imgs


def _text_targets(task: V2Task, source: TableSource, media_root: str | None, strip_instruction: bool) -> V2Set:
    """image_cls / image_qa / image_i2t: image query, raw target texts as candidates (named by their text)."""
    builder = SetBuilder(task, local=True)
    for row, qry_inst, qry_text, qry_img, _, tgt_texts, _ in _rows(task, source):
        inst = qry_inst.replace(IMAGE_PLACEHOLDER, "")
        if strip_instruction:  # image_qa and image_i2i_vg put the instruction on a new line
            inst = "\n" + inst.strip()
        text = _v1_fix(input_text(inst, qry_text, image=True)) + "\n"
        for name in tgt_texts:
            builder.candidate(name, name)
        image = media_file(media_root, task, qry_img, row)
        builder.query(row, text, {tgt_texts[0]: 1.0}, tgt_texts, image=image)
    return builder.build()


def parse_image_cls(task: V2Task, source: TableSource, media_root: str | None) -> V2Set:
    return _text_targets(task, source, media_root, strip_instruction=False)


def parse_image_qa(task: V2Task, source: TableSource, media_root: str | None) -> V2Set:
    return _text_targets(task, source, media_root, strip_instruction=True)


parse_image_i2t = parse_image_cls  # the official image_i2t loader is image_cls's, line for line


def _image_candidate_texts(tgt_inst: str, captions: list[str], trailing_newline: bool) -> list[str]:
    inst = tgt_inst.replace(IMAGE_PLACEHOLDER, "")
    if captions[0].strip():  # WebQA, EDIS, RefCOCO-Matching: each candidate has its own caption
        return [_v1_fix(input_text(inst + " " + cap, image=True)) + "\n" for cap in captions]
    return [_v1_fix(input_text(inst, image=True)) + ("\n" if trailing_newline else "")] * len(captions)


def parse_image_t2i(task: V2Task, source: TableSource, media_root: str | None) -> V2Set:
    """Text query (VisDial gets a second newline), image candidates named by their path."""
    builder = SetBuilder(task, local=True)
    for row, qry_inst, qry_text, _, tgt_inst, tgt_texts, tgt_imgs in _rows(task, source):
        text = qry_inst + " " + qry_text + "\n" + ("\n" if task.name == "VisDial" else "")
        texts = _image_candidate_texts(tgt_inst, tgt_texts, trailing_newline=True)
        for name, cand_text in zip(tgt_imgs, texts):
            builder.candidate(name, cand_text, image=media_file(media_root, task, name, row))
        builder.query(row, text, {tgt_imgs[0]: 1.0}, tgt_imgs)
    return builder.build()


def parse_image_i2i_vg(task: V2Task, source: TableSource, media_root: str | None) -> V2Set:
    """Image query, image candidates named ``path:caption`` (RefCOCO-Matching has several objects per image)."""
    builder = SetBuilder(task, local=True)
    for row, qry_inst, qry_text, qry_img, tgt_inst, tgt_texts, tgt_imgs in _rows(task, source):
        text = _v1_fix(input_text("\n" + qry_inst.replace(IMAGE_PLACEHOLDER, "").strip(), qry_text, image=True)) + "\n"
        names = [path + ":" + cap.strip('"') for path, cap in zip(tgt_imgs, tgt_texts)]
        texts = _image_candidate_texts(tgt_inst, tgt_texts, trailing_newline=False)
        for name, cand_text, path in zip(names, texts, tgt_imgs):
            builder.candidate(name, cand_text, image=media_file(media_root, task, path, row))
        builder.query(row, text, {names[0]: 1.0}, names, image=media_file(media_root, task, qry_img, row))
    return builder.build()


_PARSERS = {
    "image_cls": parse_image_cls,
    "image_qa": parse_image_qa,
    "image_i2t": parse_image_i2t,
    "image_t2i": parse_image_t2i,
    "image_i2i_vg": parse_image_i2i_vg,
}

# (name, meta-task, parser, VLM2Vec-V2.0 hit@1 %), in the order of the official image.yaml / report_score_v2.py.
_IMAGE = [
    ("ImageNet-1K", "classification", "image_cls", 80.8),
    ("N24News", "classification", "image_cls", 73.0),
    ("HatefulMemes", "classification", "image_cls", 55.8),
    ("VOC2007", "classification", "image_cls", 84.9),
    ("SUN397", "classification", "image_cls", 70.9),
    ("Place365", "classification", "image_cls", 36.1),
    ("ImageNet-A", "classification", "image_cls", 47.6),
    ("ImageNet-R", "classification", "image_cls", 89.3),
    ("ObjectNet", "classification", "image_cls", 65.1),
    ("Country211", "classification", "image_cls", 25.8),
    ("OK-VQA", "vqa", "image_qa", 51.7),
    ("A-OKVQA", "vqa", "image_qa", 44.0),
    ("DocVQA", "vqa", "image_qa", 90.1),
    ("InfographicsVQA", "vqa", "image_qa", 59.1),
    ("ChartQA", "vqa", "image_qa", 48.1),
    ("Visual7W", "vqa", "image_qa", 52.8),
    ("ScienceQA", "vqa", "image_qa", 38.1),
    ("VizWiz", "vqa", "image_qa", 43.3),
    ("GQA", "vqa", "image_qa", 65.4),
    ("TextVQA", "vqa", "image_qa", 71.6),
    ("VisDial", "retrieval", "image_t2i", 82.7),
    ("CIRR", "retrieval", "image_i2i_vg", 57.3),
    ("VisualNews_t2i", "retrieval", "image_t2i", 74.7),
    ("VisualNews_i2t", "retrieval", "image_i2t", 78.3),
    ("MSCOCO_t2i", "retrieval", "image_t2i", 75.9),
    ("MSCOCO_i2t", "retrieval", "image_i2t", 71.1),
    ("NIGHTS", "retrieval", "image_i2i_vg", 68.4),
    ("WebQA", "retrieval", "image_t2i", 90.6),
    ("FashionIQ", "retrieval", "image_i2i_vg", 19.6),
    ("Wiki-SS-NQ", "retrieval", "image_t2i", 67.6),
    ("OVEN", "retrieval", "image_i2i_vg", 64.8),
    ("EDIS", "retrieval", "image_t2i", 84.2),
    ("MSCOCO", "grounding", "image_i2i_vg", 66.2),
    ("RefCOCO", "grounding", "image_i2i_vg", 87.0),
    ("RefCOCO-Matching", "grounding", "image_i2i_vg", 86.3),
    ("Visual7W-Pointing", "grounding", "image_i2i_vg", 69.0),
]

IMAGE_TASKS = [
    V2Task(name, "image", meta, _PARSERS[parser], IMAGE_REPO, name, "test", "local", score, media="image-tasks")
    for name, meta, parser, score in _IMAGE
]
