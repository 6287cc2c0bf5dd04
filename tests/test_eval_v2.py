"""MMEB-V2: the 78-task registry, one fixture per official parser (official schemas, loaded from a local mirror),
official prompt strings, frame sampling, known scores, report, resume and bad input."""

import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

import evaluate_mmeb
from modeling_vlm2vec.common.errors import DataError
from modeling_vlm2vec.demo.eval_fixtures import KeyedEncoder
from modeling_vlm2vec.demo.v2_fixtures import write_table, write_v2_suite
from modeling_vlm2vec.evaluation.mmeb_v2.registry import (
    V2_PUBLISHED_AGGREGATES,
    V2_REGISTRY,
    resolve_v2_tasks,
    v2_groups,
)
from modeling_vlm2vec.evaluation.mmeb_v2.runner import load_v2_sets, run_v2_evaluation


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return write_v2_suite(tmp_path_factory.mktemp("v2"))


@pytest.fixture(scope="module")
def sets(suite):
    return {s.name: s for s in load_v2_sets(list(suite["expected"]), suite["data"], suite["media"])}


def test_registry_has_the_78_official_tasks():
    tasks = list(V2_REGISTRY.values())
    assert Counter(t.modality for t in tasks) == {"image": 36, "video": 18, "visdoc": 24}
    assert Counter((t.modality, t.meta_task) for t in tasks) == {
        ("image", "classification"): 10, ("image", "vqa"): 10, ("image", "retrieval"): 12, ("image", "grounding"): 4,
        ("video", "classification"): 5, ("video", "qa"): 5, ("video", "retrieval"): 5, ("video", "moment_retrieval"): 3,
        ("visdoc", "ViDoRe-V1"): 10, ("visdoc", "ViDoRe-V2"): 4, ("visdoc", "VisRAG"): 6, ("visdoc", "VisDoc-OOD"): 4,
    }  # fmt: skip
    assert {t.metric for t in tasks if t.modality == "visdoc"} == {"ndcg@5"}
    assert {t.metric for t in tasks if t.modality != "visdoc"} == {"hit@1"}
    assert all(t.eval_type == "local" for t in tasks if t.modality == "image")
    assert all(t.eval_type == "global" for t in tasks if t.modality == "visdoc")
    video_global = {t.name for t in tasks if t.modality == "video" and t.eval_type == "global"}
    assert video_global == {"K700", "HMDB51", "UCF101", "Breakfast", "DiDeMo", "MSR-VTT", "MSVD", "VATEX", "YouCook2"}
    assert {t.repo for t in tasks if t.modality == "image"} == {"ziyjiang/MMEB_Test_Instruct"}
    assert (V2_REGISTRY["MSR-VTT"].config, V2_REGISTRY["YouCook2"].split) == ("test_1k", "val")
    assert set(v2_groups(V2_REGISTRY)) == set(V2_PUBLISHED_AGGREGATES)
    assert [t.name for t in resolve_v2_tasks(["video"])][:2] == ["K700", "SmthSmthV2"]
    with pytest.raises(DataError, match="did you mean MSR-VTT"):
        resolve_v2_tasks(["MSR-VT"])


def test_official_prompt_strings(sets):
    def query(name, i=0):
        return sets[name].queries[i][0]

    def candidate(name, cand):
        s = sets[name]
        return s.candidates[s.candidate_names.index(cand)][0]

    qa_prompt = (
        "<|video_1|> Given a video and a question, select the most accurate answer from the provided candidates. "
        "Return only the exact text of your chosen answer. Question:  "
    )
    assert query("ImageNet-1K") == "<|image_1|>  Represent the given image for classification.\n"
    assert candidate("ImageNet-1K", "label [1]") == "label [1]"
    assert query("OK-VQA") == "<|image_1|>\nRepresent the given image with the following question: what [3]?\n"
    assert query("VisDial") == (
        "Represent the given dialogue about an image, which is used for image retrieval: Q: dog [1]\n\n"
    )
    assert candidate("VisDial", "vis/c[7].png") == "<|image_1|>  Represent the given image.\n"
    assert query("RefCOCO-Matching") == (
        "<|image_1|>\nSelect the portion of the image that follows the language expressions: obj [1]\n"
    )
    assert candidate("RefCOCO-Matching", "ref/scene.png:thing [2]") == (
        '<|image_1|>  Select the portion of the image that follows the language expressions:  "thing [2]"\n'
    )
    assert query("NIGHTS") == "<|image_1|>\nFind a day-to-day image that looks similar to the provided image.\n"
    # An i2i candidate without a caption is named "<path>:" and, unlike t2i's, has no trailing newline.
    assert candidate("NIGHTS", "nights/t[3].png:") == "<|image_1|>  Represent the given image."
    assert query("MSCOCO_i2t") == "<|image_1|>  Find an image caption describing the given everyday image.\n"
    assert query("ViDoRe_arxivqa") == "Find a document image that matches the given query: chart [1]"
    assert query("VisRAG_ArxivQA") == "Find a document image that matches the given query: plot [3]"
    assert query("MSVD") == "Find the video snippet that corresponds to the given summary: a [1]"
    assert query("DiDeMo", 1) == "Find a video that includes the following described scenes: scene [6]"
    assert sets["DiDeMo"].candidate_names == ["dd[4]", "dd[5]"]  # the video file's stem
    assert query("YouCook2") == "Find a video that demonstrates the following action while making a recipe: cut [2]"
    assert query("VATEX") == "Select a video that fits the description provided: cook [3]"
    assert candidate("ViDoRe_arxivqa", "p2") == "<|image_1|> Understand the content of the provided document image."
    assert query("MSR-VTT") == "Find a video that contains the following visual content: a clip [1]"
    assert candidate("MSR-VTT", "vid[1]") == "<|video_1|> Understand the content of the provided video."
    assert query("HMDB51") == "<|video_1|> What actions or objects interactions are the person in the video doing?"
    assert query("Video-MME") == qa_prompt + "color [2]?\nA. red [1]\nB. blue [2]\nC. x\nD. y"
    assert candidate("Video-MME", "A. red [1]") == "red [1]"
    assert query("NExTQA") == qa_prompt + "why [3]\nOptions:\n(A) no [1]\n(B) yes [3]\n(C) a2\n(D) a3\n(E) a4"
    assert query("EgoSchema") == qa_prompt + "what [4]?A. cook [4] B. eat [5]"
    assert query("ActivityNetQA") == qa_prompt + "is it day? (A) yes; (B) no."
    assert query("MVBench") == qa_prompt + "which [6]\nOptions:\n(A) right [6]\n(B) other [8]"
    assert query("QVHighlight") == (
        "<|video_1|> Find the clip that corresponds to the described scene in the given video: scene [1]"
    )
    assert (
        query("MomentSeeker", 1)
        == "<|image_1|> Select the video clip that aligns with the given text and image: find it"
    )


def test_items_frames_and_relevance(sets):
    (text, image, frames) = sets["MSR-VTT"].candidates[0]
    # 10 extracted frames, 8 kept at int(linspace(0, 9, 8)) = 0 1 2 3 5 6 7 9, in natural (not string) order.
    assert [Path(f).name for f in frames] == [f"frame_{i}.jpg" for i in (1, 2, 3, 4, 6, 7, 8, 10)]
    assert image is None and sets["MSR-VTT"].query_candidates is None  # global
    assert len(sets["HMDB51"].queries[0][2]) == 3  # fewer frames than 8: all of them
    # Global video classification ranks the rows' labels and the official list's 51 HMDB51 classes.
    assert sets["HMDB51"].candidate_names[:3] == ["run [1]", "jump [3]", "ride_bike"]
    assert len(sets["HMDB51"].candidates) == 2 + 51
    assert isinstance(sets["ViDoRe_arxivqa"].candidates[0][1], bytes)  # pages stay embedded
    # qrels: score 0 dropped, a repeated pair keeps its highest grade.
    names = sets["ViDoRe_arxivqa"].candidate_names
    assert [{names[c]: g for c, g in r.items()} for r in sets["ViDoRe_arxivqa"].relevant] == [
        {"p1": 2.0},
        {"p2": 1.0, "p3": 2.0},
    ]
    # Candidates are de-duplicated by the official name: VisDial's shared negative is one item.
    assert sets["VisDial"].candidate_names.count("vis/c[7].png") == 1
    assert len(sets["MVBench"].queries) == 20 and len(sets["MVBench"].candidates) == 2


def test_known_scores_report_and_resume(suite, sets, tmp_path):
    encoder = KeyedEncoder()
    summary = run_v2_evaluation(encoder, list(sets.values()), output_dir=tmp_path, verbose=False)
    for name, expected in suite["expected"].items():
        record = json.loads((tmp_path / "mmeb-v2" / f"{name}_score.json").read_text())
        assert record["score"] == pytest.approx(expected), name
        assert record["video_input"] == ("frames" if V2_REGISTRY[name].modality == "video" else None)
    assert {V2_REGISTRY[name].parser for name in suite["expected"]} == {t.parser for t in V2_REGISTRY.values()}
    assert json.loads((tmp_path / "mmeb-v2" / "ViDoRe_arxivqa_score.json").read_text())["metric"] == "ndcg@5"
    image = summary["aggregates"]["image"]
    assert (image["n"], image["N"]) == (6, 36)
    assert image["score"] == pytest.approx((0.5 + 1.0 + 2 / 3 + 0.5 + 1.0 + 1.0) / 6)
    names = ("ImageNet-1K", "OK-VQA", "VisDial", "RefCOCO-Matching", "MSCOCO_i2t", "NIGHTS")
    published = [V2_REGISTRY[n].published for n in names]
    assert image["paper_score"] == pytest.approx(sum(published) / 600)  # partial group: mean of published
    video_qa = summary["aggregates"]["video/qa"]  # complete: the paper's Table 2 value
    assert video_qa["n"] == 5 and video_qa["paper_score"] == pytest.approx(0.343)
    expected = suite["expected"]
    assert summary["aggregates"]["All"]["score"] == pytest.approx(sum(expected.values()) / len(expected))
    markdown = (tmp_path / "mmeb-v2" / "results.md").read_text()
    assert "| ViDoRe_arxivqa | ViDoRe-V1 | ndcg@5 | 96.2 | 78.9 |" in markdown
    assert (tmp_path / "mmeb-v2" / "results.png").read_bytes().startswith(b"\x89PNG")
    again = KeyedEncoder()
    assert run_v2_evaluation(again, list(sets.values()), output_dir=tmp_path, verbose=False) == summary
    assert again.calls == []  # every task resumed from its score file


def test_video_tasks_need_a_model_with_video_input(sets, tmp_path):
    class ImagesOnly(KeyedEncoder):
        video_input = None

    encoder = ImagesOnly()
    with pytest.raises(DataError, match="MSR-VTT.*video_input"):
        run_v2_evaluation(encoder, [sets["ImageNet-1K"], sets["MSR-VTT"]], output_dir=tmp_path / "out", verbose=False)
    assert encoder.calls == [] and not (tmp_path / "out").exists()


def test_bad_rows_name_task_row_and_file(suite, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(suite["data"], data)
    repo = "vidore/arxivqa_test_subsampled_beir"
    write_table(
        data,
        repo,
        "qrels",
        "test",
        [{"query-id": 1, "corpus-id": "p1", "score": 1}, {"query-id": 2, "corpus-id": "nope", "score": 1}],
    )
    with pytest.raises(DataError, match=r"ViDoRe_arxivqa.*row 1.*qrels.*'nope'"):
        load_v2_sets(["ViDoRe_arxivqa"], data, suite["media"])
    with pytest.raises(DataError, match=r"MSR-VTT.*row 0.*folder not found"):
        load_v2_sets(["MSR-VTT"], suite["data"], tmp_path / "no-media")
    rows = pq.read_table(suite["data"] / "ziyjiang/MMEB_Test_Instruct/VisDial/test.parquet").to_pylist()
    rows[1]["tgt_img_path"] = ["../../escape.png", "vis/c[7].png"]
    write_table(data, "ziyjiang/MMEB_Test_Instruct", "VisDial", "test", rows)
    with pytest.raises(DataError, match=r"VisDial.*row 1.*escapes"):
        load_v2_sets(["VisDial"], data, suite["media"])
    with pytest.raises(DataError, match=r"MSR-VTT.*VLM2Vec/MSR-VTT:test_1k:test.*cannot load it from the Hub"):
        load_v2_sets(["MSR-VTT"], None, suite["media"])  # tests run offline: the Hub is unreachable
    with pytest.raises(DataError, match="local mirror folder"):
        load_v2_sets(["MSR-VTT"], "TIGER-Lab/MMEB-eval", suite["media"])


def test_cli_rejects_an_unknown_task_before_loading_a_model(tmp_path, capsys):
    argv = [
        "--benchmark",
        "mmeb-v2",
        "--model_name_or_path",
        str(tmp_path / "absent"),
        "--output_dir",
        str(tmp_path / "o"),
    ]
    assert evaluate_mmeb.main(argv + ["--subset_name", "MSR-VTX"]) == 2
    assert "unknown MMEB-V2 task 'MSR-VTX'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_downloaded_hub_layout_with_a_data_folder_loads_the_same(suite, sets, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(suite["data"], data)
    folder = data / "VLM2Vec/HMDB51"
    (folder / "data").mkdir()
    (folder / "test.parquet").rename(folder / "data" / "test-00000-of-00001.parquet")
    (moved,) = load_v2_sets(["HMDB51"], data, suite["media"])
    assert moved.fingerprint == sets["HMDB51"].fingerprint


def test_media_files_are_decoded_at_load_and_their_content_keys_the_fingerprint(suite, sets, tmp_path):
    media = tmp_path / "media"
    shutil.copytree(suite["media"], media)
    frame = Path(sets["MSR-VTT"].candidates[0][2][0]).relative_to(suite["media"])
    (copied,) = load_v2_sets(["MSR-VTT"], suite["data"], media)
    assert copied.fingerprint == load_v2_sets(["MSR-VTT"], suite["data"], media)[0].fingerprint
    with Image.open(media / frame) as img:
        before = img.tobytes()
        Image.new(img.mode, img.size, "white" if img.getpixel((0, 0)) != (255, 255, 255) else "black").save(
            media / frame, format=img.format
        )  # same path, other pixels
    with Image.open(media / frame) as img:
        assert img.tobytes() != before
    assert load_v2_sets(["MSR-VTT"], suite["data"], media)[0].fingerprint != copied.fingerprint
    (media / frame).write_bytes(b"")  # would only fail once the model reads it
    with pytest.raises(DataError, match=rf"dataset 'MSR-VTT', file '[^']*{frame.name}': image file is empty"):
        load_v2_sets(["MSR-VTT"], suite["data"], media)


def test_a_frame_file_linked_out_of_the_media_root_is_refused_before_any_work(suite, sets, tmp_path, capsys):
    media = tmp_path / "media"
    shutil.copytree(suite["media"], media)
    frame = media / Path(sets["MSR-VTT"].candidates[0][2][0]).relative_to(suite["media"])
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    shutil.copy(frame, secret)
    # a link to another frame inside the media root is an ordinary frame: the set loads as before
    inside = frame.parent / "00000-link.png"
    frame.rename(inside)
    frame.symlink_to(inside)
    assert load_v2_sets(["MSR-VTT"], suite["data"], media)[0].fingerprint
    frame.unlink()
    frame.symlink_to(secret)  # the frame folder is inside the root, this one file is not
    with pytest.raises(DataError, match=rf"MSR-VTT', row \d+, file '[^']*{frame.name}': image path escapes"):
        load_v2_sets(["MSR-VTT"], suite["data"], media)
    out = tmp_path / "out"
    argv = ["--benchmark", "mmeb-v2", "--subset_name", "MSR-VTT", "--dataset_name", str(suite["data"])]
    argv += ["--image_dir", str(media), "--model_name_or_path", str(tmp_path / "absent"), "--output_dir", str(out)]
    assert evaluate_mmeb.main(argv) == 2
    assert "image path escapes" in capsys.readouterr().err and not out.exists()


def test_a_literal_backbone_token_in_a_task_is_refused_before_the_model_loads(
    suite, tiny_backbone_dir, tmp_path, capsys, monkeypatch
):
    data = tmp_path / "data"
    shutil.copytree(suite["data"], data)
    rows = pq.read_table(suite["data"] / "ziyjiang/MMEB_Test_Instruct/VisDial/test.parquet").to_pylist()
    rows[1]["qry_text"] = rows[1]["qry_text"] + " <|vision_start|><|image_pad|><|vision_end|>"
    write_table(data, "ziyjiang/MMEB_Test_Instruct", "VisDial", "test", rows)

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was refused")

    monkeypatch.setattr(evaluate_mmeb, "load_vlm2vec", refuse)
    out = tmp_path / "out"
    argv = ["--benchmark", "mmeb-v2", "--subset_name", "VisDial", "--dataset_name", str(data)]
    argv += ["--image_dir", str(suite["media"]), "--model_name_or_path", str(tiny_backbone_dir("qwen2_vl"))]
    assert evaluate_mmeb.main(argv + ["--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: dataset 'VisDial': query 1: text holds the backbone's image token '<|image_pad|>'")
    assert not out.exists()
