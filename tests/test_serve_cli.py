"""``python -m modeling_vlm2vec.serve``: bad flags exit 2 before anything starts; a real run serves the checkpoint
(file:// images under the allowed folder), logs one line per request and stops cleanly on SIGTERM."""

import os
import queue
import re
import signal
import subprocess
import sys
import threading

import httpx
import numpy as np
import pytest
from serve_helpers import export_tiny, picture

from modeling_vlm2vec.serve.__main__ import main


@pytest.fixture(scope="module")
def exported(tiny_backbone_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-cli") / "export"
    return folder, export_tiny(tiny_backbone_dir("qwen2_vl"), folder)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--max_batch_size", "0"], "max_batch_size must be a positive integer"),
        (["--max-wait-ms", "-1"], "max_wait_ms must be a finite number"),
        (["--allowed-local-media-path", "/no/such/folder"], "is not a folder"),
        (["--port", "70000"], "--port must be in"),
        (["--served-model-name", ""], "no empty name"),
    ],
)
def test_bad_flags_exit_2_with_an_error_line(exported, flags, words, capsys):
    folder, _ = exported
    assert main([str(folder), *flags]) == 2
    assert re.search(rf"^error: .*{re.escape(words)}", capsys.readouterr().err, re.M)


def test_a_folder_without_a_model_exits_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no config.json" in err


def test_a_real_run_serves_logs_and_stops_on_sigterm(exported, tmp_path):
    folder, model = exported
    images = tmp_path / "images"
    images.mkdir()
    picture("blue", (44, 30)).save(images / "blue.png")
    command = [sys.executable, "-m", "modeling_vlm2vec.serve", str(folder), "--port", "0",
               "--served-model-name", "tiny", "--allowed-local-media-path", str(images)]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=os.environ)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    seen = []
    try:
        url = None
        while url is None:
            line = lines.get(timeout=120)
            seen.append(line)
            found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
            url = found and found.group(1)
        for _ in range(600):  # loaded in the background: 503 until then
            if httpx.get(f"{url}/health").status_code == 200:
                break
            threading.Event().wait(0.1)
        messages = [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"file://{images}/blue.png"}}]}
        ]
        response = httpx.post(f"{url}/v1/embeddings", json={"model": "tiny", "messages": messages},
                              headers={"X-Request-Id": "req-42"}, timeout=60)  # fmt: skip
        assert response.status_code == 200, response.text
        expected = model.encode([picture("blue", (44, 30))])[0].numpy()
        np.testing.assert_allclose(response.json()["data"][0]["embedding"], expected, atol=1e-5, rtol=0)
        outside = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"file://{folder}/x.png"}}]}]
        assert httpx.post(f"{url}/v1/embeddings", json={"messages": outside}).status_code == 400
    finally:
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=60)
    while not lines.empty():
        seen.append(lines.get())
    log = "".join(seen)
    assert status in (0, -signal.SIGTERM), log  # uvicorn re-raises the signal it caught once it has shut down
    assert "Application shutdown complete" in log
    assert re.search(r"request req-42: 200, 1 inputs, \d+ tokens, [\d.]+ ms", log), log
