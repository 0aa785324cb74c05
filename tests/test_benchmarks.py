"""The measurement tools (benchmarks/) and studies (experiments/) import with memprune as installed, without editing
sys.path, and answer --help; memprune.bench's copy loop measures what it says."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

BENCHMARKS = sorted(p for p in (REPO / "benchmarks").glob("*.py") if p.name != "__init__.py")
EXPERIMENTS = sorted((REPO / "experiments").glob("*/*.py"))
TOOLS = BENCHMARKS + EXPERIMENTS


def test_there_are_tools_and_no_one_off_left_in_benchmarks():
    assert len(BENCHMARKS) >= 5 and len(EXPERIMENTS) >= 5
    assert (REPO / "benchmarks/__init__.py").exists()  # `python -m benchmarks.X`
    for folder in {p.parent for p in EXPERIMENTS}:
        assert (folder / "README.md").exists(), f"{folder} has no README naming its config and result commit"


@pytest.mark.parametrize("path", TOOLS, ids=lambda p: str(p.relative_to(REPO)))
def test_tool_imports_without_sys_path_edits_and_answers_help(path, monkeypatch, capsys):
    assert "sys.path" not in path.read_text()
    spec = importlib.util.spec_from_file_location(f"tool_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its top-level imports resolve
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 0 and "usage:" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.stem)
def test_benchmark_runs_as_a_module_from_the_repository(path):
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{path.stem}", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]


def test_copies_scores_each_prompt_against_its_own_photo(tiny_pipe):
    """Own photos = the seed-0 images of each prompt: SSIM 1 at seed 0 (so the images are prompt-major), and the
    copy rate follows the majority rule over seeds."""
    from memprune import bench
    from memprune.sampling import SamplingConfig, generate

    cfg = SamplingConfig(steps=2, guidance=3.0, batch_size=4)
    prompts = ["a red square", "a blue circle"]
    own = generate(tiny_pipe, prompts, [0, 0], cfg)
    got = bench.copies(tiny_pipe, prompts, own, [0, 1], cfg, threshold=0.999)
    assert got.ssim.shape == (2, 2) and got.images.shape[0] == 4
    assert np.allclose(got.ssim[:, 0], 1.0)
    assert np.all(got.ssim[:, 1] < 0.999) and got.rate == 0.0  # one seed of two is not most seeds
    with pytest.raises(ValueError, match="own photos"):
        bench.copies(tiny_pipe, prompts, own[:1], [0], cfg, threshold=0.5)
    assert bench.int_list("0, 1,,2") == [0, 1, 2]
    assert bench.prompt_major(["a", "b"], [0, 1]) == (["a", "a", "b", "b"], [0, 1, 0, 1])
