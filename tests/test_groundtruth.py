"""`memprune fetch-training-images` against a local HTTP server: images land in <root>/<index>/0.png, dead links
are reported and not fatal, a second run skips what is present."""

import csv
import functools
import http.server
import json
import threading

import numpy as np
import pytest
from PIL import Image

from memprune.cli import main


@pytest.fixture
def server(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(site / "a.jpg")
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(site / "b.png")  # grayscale: converted to RGB
    (site / "c.jpg").write_text("<html>not an image</html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_fetch_training_images_downloads_and_reports_dead_links(server, tmp_path, capsys):
    prompts = tmp_path / "mem.jsonl"
    rows = [{"caption": "first", "url": f"{server}/a.jpg"}, {"caption": "second", "url": f"{server}/missing.jpg"},
            {"caption": "third", "url": f"{server}/b.png"}, {"caption": "fourth", "url": f"{server}/c.jpg"},
            {"caption": "fifth"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    root = tmp_path / "gt"
    assert main(["fetch-training-images", "--prompts", str(prompts), "--root", str(root), "--timeout", "5"]) == 0
    assert "dead: 3" in capsys.readouterr().out
    assert np.asarray(Image.open(root / "0" / "0.png")).shape == (8, 8, 3)
    assert Image.open(root / "2" / "0.png").mode == "RGB"
    assert not (root / "1").exists() and not (root / "3").exists()
    report = {int(r["index"]): r["status"] for r in csv.DictReader(open(root / "fetch_report.csv"))}
    assert report[0] == "downloaded" and report[1] == "dead: HTTP 404"
    assert report[3] == "dead: not an image" and report[4] == "dead: no url"
    # second run: nothing downloaded again
    assert main(["fetch-training-images", "--prompts", str(prompts), "--root", str(root)]) == 0
    assert "present: 2" in capsys.readouterr().out


def test_fetch_training_images_needs_urls(tmp_path, capsys):
    prompts = tmp_path / "mem.jsonl"
    prompts.write_text('{"caption": "x"}\n')
    assert main(["fetch-training-images", "--prompts", str(prompts), "--root", str(tmp_path / "gt")]) == 2
    assert f"{prompts}: no row has a `url` key" in capsys.readouterr().err
