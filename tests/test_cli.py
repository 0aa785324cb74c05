"""CLI and input validation: messages name the file and line or key."""

import csv

import pytest

from conftest import REPO, snakemake, write_config
from memprune.cli import main
from memprune.errors import InputError
from memprune.formats.prompts import read_prompts


@pytest.mark.slow  # minutes of model work on 2 cores: out of the fast tier
def test_sample_cli_writes_pngs_and_index(tiny_model, tmp_path):
    out = tmp_path / "samples"
    assert main(["sample", "--model", str(tiny_model), "--prompt", "a red circle at the left on a black background",
                 "--prompt", "ember shadow", "--seeds", "0,1", "--steps", "2", "--guidance", "2", "--batch-size", "3",
                 "--device", "cpu", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "index.csv")))
    assert [(r["prompt"][:5], r["seed"]) for r in rows] == [("a red", "0"), ("a red", "1"), ("ember", "0"),
                                                            ("ember", "1")]
    assert all((out / r["file"]).exists() for r in rows)
    # one generator per image: the batch cut does not change an image
    out2 = tmp_path / "samples2"
    main(["sample", "--model", str(tiny_model), "--prompt", "ember shadow", "--seeds", "1", "--steps", "2",
          "--guidance", "2", "--device", "cpu", "--out", str(out2)])
    assert (out2 / "00000_s1.png").read_bytes() == (out / rows[3]["file"]).read_bytes()


@pytest.mark.parametrize("content,suffix,message", [
    (b"", ".txt", "no prompts"),
    (b'{"caption": "a"}\n{bad json\n', ".jsonl", ":2: bad JSON"),
    (b'{"caption": "a"}\n{"text": "b"}\n', ".jsonl", ":2: missing key 'caption'"),
    (b"one\ntwo\none\n", ".txt", ":3: duplicate prompt (first at line 1)"),
    (b"ok\n\xff\xfe\n", ".txt", ":2: not valid UTF-8"),
    (b"caption;x\n;1\n", ".csv", ":2: empty prompt"),
    (b"foo,bar\n1,2\n", ".csv", "no column 'caption'"),
])
def test_bad_prompt_files_name_file_and_line(tmp_path, content, suffix, message):
    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        read_prompts(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_prompt_formats(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"caption": "x", "index": 1}\n{"caption": "y"}\n')
    (tmp_path / "b.csv").write_text("caption;type\nx;VM\ny;TM\n")
    (tmp_path / "c.txt").write_text("x\ny\n\n")
    assert (read_prompts(tmp_path / "a.jsonl") == read_prompts(tmp_path / "b.csv") == read_prompts(tmp_path / "c.txt")
            == ["x", "y"])
    assert len(read_prompts(REPO / "resources/prompts/sd/sd1_memorized_500.jsonl")) == 500


def test_sd_evaluation_prompts_read_as_the_jobs_read_them():
    """The SD configs' evaluation prompts through the evaluation jobs' own reader (eval-sample, eval-score): no
    flag, so a repeated prompt or one in both files stops it (coco2014_val_10000.csv lost 34 repeats)."""
    from memprune.evaluate.prompts import eval_prompts

    sd = REPO / "resources/prompts/sd"
    for memorized in ("sd1_memorized_500.jsonl", "sd2_mem.jsonl"):
        mem, non = eval_prompts(sd / memorized, None, sd / "coco2014_val_10000.csv", None)
        assert len(non) == 9966 and len(mem) in (500, 219)


def test_cli_error_exit_code_and_message(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{nope\n")
    assert main(["sample", "--model", "unused", "--prompts", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert f"{bad}:1: bad JSON" in capsys.readouterr().err


@pytest.mark.slow
def test_config_error_names_the_key(tmp_path, tiny_model):
    write_config(tmp_path, tiny_model, {"mem": ["a", "b"]}, {"c": {"set": "mem", "n_subsets": 1, "size": 2}},
                 masks={"sparsity": "lots"})
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert "sparsity" in proc.stderr + proc.stdout and "'lots' is not of type 'number'" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_unknown_config_key_is_refused(tmp_path, tiny_model):
    write_config(tmp_path, tiny_model, {"mem": ["a", "b"]}, {"c": {"set": "mem", "n_subsets": 1, "size": 2}},
                 masks={"sparsty": 0.1})
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0 and "sparsty" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_subset_larger_than_set_is_refused(tmp_path, tiny_model):
    write_config(tmp_path, tiny_model, {"mem": ["a", "b"]}, {"c": {"set": "mem", "n_subsets": 1, "size": 3}})
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert "collections.c: subset size 3 is larger than its prompt set (2 prompts)" in proc.stderr + proc.stdout
