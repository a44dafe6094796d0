"""Faults a careful user meets: bad teachers, params that do not fit the teacher, kills and
interrupts mid-write, JSONL on stdin, unwritable outputs, resumes, file permissions."""
from __future__ import annotations

import errno
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import save_file

from nerdistill.cli import main
from nerdistill.io import OutputError, atomic_dir, atomic_path
from nerdistill.params_reader import params_from_dict
from nerdistill.streaming import predict_stream

NERDISTILL = str(Path(sys.executable).parent / "nerdistill")
LINES = ["Marie Durand habite à Lyon.", "Paul travaille chez Renault à Paris.", "Il pleut sur Brest."]


def _write_params(folder: Path, teacher: Path | str, **sections) -> None:
    (folder / "params.yaml").write_text(yaml.safe_dump({"teacher": {"model_name": str(teacher)}, **sections}))


def _one_line_error(caplog) -> str:
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "Traceback" not in caplog.text
    return errors[0].getMessage()


# --- 1, 2: teachers and params checked before anything is written ------------------------------

def test_empty_teacher_folder_is_one_line_exit_2(mlflow_workdir, caplog):
    (mlflow_workdir / "empty_teacher").mkdir()
    (mlflow_workdir / "corpus.txt").write_text("\n".join(LINES) + "\n")
    _write_params(mlflow_workdir, mlflow_workdir / "empty_teacher")
    assert main(["annotate", "--corpus", "corpus.txt", "--out", "annotated", "--metrics", "m.json"]) == 2
    assert "teacher.model_name" in _one_line_error(caplog)


def test_config_without_model_type_is_one_line_exit_2(mlflow_workdir, caplog, annotated_dir):
    folder = mlflow_workdir / "odd_teacher"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    _write_params(mlflow_workdir, folder)
    code = main(["distill", "--data", str(annotated_dir), "--out", "student", "--metrics", "m.json",
                 "--history", "h.csv", "--components", "c.csv", "--plot", "p.png", "--checkpoints", "ckpt"])
    assert code == 2
    assert "teacher.model_name" in _one_line_error(caplog)


@pytest.mark.parametrize("section", [{"student": {"num_layers": 2, "teacher_layers": [1, 9]},
                                      "train": {"layer_map": {"teacher": [2], "student": [2]}}},
                                     {"student": {"num_layers": 2, "teacher_layers": [1, 2]},
                                      "train": {"layer_map": {"teacher": [2, 9], "student": [1, 2]}}}])
def test_layers_beyond_the_teacher_fail_before_checkpoints_are_touched(mlflow_workdir, caplog, annotated_dir,
                                                                        demo_teacher_dir, section):
    previous = mlflow_workdir / "ckpt" / "checkpoint-7"
    previous.mkdir(parents=True)
    (previous / "trainer_state.json").write_text("{}")
    _write_params(mlflow_workdir, demo_teacher_dir, **section)
    started = time.monotonic()
    code = main(["distill", "--data", str(annotated_dir), "--out", "student", "--metrics", "m.json",
                 "--history", "h.csv", "--components", "c.csv", "--plot", "p.png", "--checkpoints", "ckpt"])
    assert code == 2
    message = _one_line_error(caplog)
    assert "9" in message and "4 layers" in message
    assert previous.is_dir() and not (mlflow_workdir / "student").exists()
    assert time.monotonic() - started < 30


# --- 3: annotate writes its folder whole --------------------------------------------------------

def test_interrupted_annotate_leaves_the_previous_folder_whole(tmp_path, demo_teacher_dir, monkeypatch):
    from nerdistill import annotated
    from nerdistill.stages import annotate

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"{line} ({n})" for n in range(10) for line in LINES) + "\n")
    params = params_from_dict({"teacher": {"model_name": str(demo_teacher_dir)}})
    out = tmp_path / "annotated"
    annotate.run(params, corpus, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # A SIGKILL between two files left by an earlier run: its temp folder, with a dead process id.
    stale = tmp_path / ".annotated.999999999.x1.tmp"
    stale.mkdir()
    (stale / "train.jsonl").write_text("half")

    def dies_after_the_splits(path, obj):
        raise KeyboardInterrupt

    monkeypatch.setattr(annotated, "write_json", dies_after_the_splits)
    corpus.write_text("\n".join(f"{line} [{n}]" for n in range(10) for line in LINES) + "\n")
    with pytest.raises(KeyboardInterrupt):
        annotate.run(params, corpus, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotated", "corpus.txt"]  # no temp left, stale swept


# --- 4: interrupts -------------------------------------------------------------------------------

def _start_predict(tmp_path: Path, model: Path) -> tuple[subprocess.Popen, Path]:
    source = tmp_path / "in.txt"
    source.write_text("\n".join(LINES * 4000) + "\n")
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([NERDISTILL, "predict", "--model", str(model), "--input", str(source),
                             "--output", str(out), "--batch-size", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            # A runner started in the background (nohup, `&`) ignores SIGINT and its children
                            # inherit that, so Python would never raise KeyboardInterrupt: give it Ctrl-C back.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.jsonl.*.tmp")):  # tagging has begun
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    return proc, out


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_predict_interrupted_cleans_up_and_says_so(tmp_path, demo_teacher_dir, signum, code):
    proc, out = _start_predict(tmp_path, demo_teacher_dir)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code
    assert "interrupted" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl.*"))


def test_temp_file_of_a_killed_predict_is_swept_by_the_next(tmp_path, demo_teacher_dir):
    proc, out = _start_predict(tmp_path, demo_teacher_dir)
    proc.kill()
    proc.communicate(timeout=60)
    assert list(tmp_path.glob(".out.jsonl.*.tmp"))
    (tmp_path / "in.txt").write_text(LINES[0] + "\n")
    done = subprocess.run([NERDISTILL, "predict", "--model", str(demo_teacher_dir), "--input", "in.txt",
                           "--output", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(out.read_text().splitlines()) == 1 and not list(tmp_path.glob(".out.jsonl.*"))


# --- 5: JSONL on stdin ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher_tagger(demo_teacher_dir):
    from nerdistill.tagger.load import load_tagger

    return load_tagger(demo_teacher_dir, device="cpu")


def _stdin(monkeypatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))


def test_jsonl_on_stdin_is_sniffed(monkeypatch, capsys, teacher_tagger):
    _stdin(monkeypatch, "\n" + "".join(json.dumps({"id": f"Paris-{i}", "text": line}) + "\n"
                                       for i, line in enumerate(LINES)))
    predict_stream(teacher_tagger, "-", "-")
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row.get("id") for row in rows[1:]] == ["Paris-0", "Paris-1", "Paris-2"]
    assert rows[1]["text"] == LINES[0]
    assert all(entity["text"] in LINES[i] for i, row in enumerate(rows[1:]) for entity in row["entities"])


def test_format_txt_reads_stdin_as_text_even_when_it_looks_like_json(monkeypatch, capsys, teacher_tagger):
    raw = json.dumps({"text": LINES[0]})
    _stdin(monkeypatch, raw + "\n")
    predict_stream(teacher_tagger, "-", "-", input_format="txt")
    assert json.loads(capsys.readouterr().out)["text"] == raw


# --- 7: messages name what the user gave ---------------------------------------------------------

def test_unwritable_output_is_named_before_the_model_loads(tmp_path, demo_teacher_dir, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    (tmp_path / "in.txt").write_text(LINES[0] + "\n")
    target = blocker / "out.jsonl"
    code = main(["predict", "--model", str(demo_teacher_dir), "--input", str(tmp_path / "in.txt"),
                 "--output", str(target)])
    assert code == 2
    assert str(target) in _one_line_error(caplog) and "tagger from" not in caplog.text


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_named(tmp_path, demo_teacher_dir, caplog):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    (tmp_path / "in.txt").write_text(LINES[0] + "\n")
    code = main(["predict", "--model", str(demo_teacher_dir), "--input", str(tmp_path / "in.txt"),
                 "--output", str(folder / "out.jsonl")])
    assert code == 2 and str(folder / "out.jsonl") in _one_line_error(caplog)


def test_disk_full_names_the_output(tmp_path):
    with pytest.raises(OutputError, match=r"out\.jsonl: cannot write") as caught:
        with atomic_path(tmp_path / "out.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert ".tmp" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_model_folder_without_weights_blames_the_option(tmp_path, demo_teacher_dir, caplog):
    folder = tmp_path / "no_weights"
    folder.mkdir()
    (folder / "config.json").write_text((demo_teacher_dir / "config.json").read_text())
    (tmp_path / "in.txt").write_text(LINES[0] + "\n")
    code = main(["predict", "--model", str(folder), "--input", str(tmp_path / "in.txt"), "--output", "-"])
    message = _one_line_error(caplog)
    assert code == 2 and "--model" in message and "teacher.model_name" not in message


# --- 8: resume says where from ------------------------------------------------------------------

def test_resume_logs_the_checkpoint(random_teacher_dir, annotated_dir, tmp_path, caplog):
    from nerdistill.annotated import AnnotatedDir
    from nerdistill.data import load_training_data
    from nerdistill.losses import Curriculum, DistillContext
    from nerdistill.modeling import build_student
    from nerdistill.trainer import train_student
    from nerdistill.teacher import load_teacher

    params = params_from_dict({"student": {"num_layers": 2, "teacher_layers": [1, 2], "max_length": 128},
                               "teacher": {"max_length": 128, "stride": 32},
                               "train": {"batch_size": 8, "layer_map": {"teacher": [2], "student": [2]}},
                               "distill": {"epochs": 1}})
    teacher, tokenizer = load_teacher(str(random_teacher_dir))
    data = load_training_data(AnnotatedDir(annotated_dir), tokenizer, 128, 32)
    data.train, data.val = data.train[:16], data.val[:8]

    def fresh_student():
        return build_student(teacher, data.id2label, [1, 2], 0.0, provenance={})

    def fit(resume):
        student = fresh_student()
        context = DistillContext.build(student.config.id2label, 2, teacher.config.id2label, data.transitions,
                                       params.train.layer_map.pairs(), params.train.temperature,
                                       Curriculum(params.distill.phase1_epochs, params.distill.phase1_weights,
                                                  params.distill.phase2_weights))
        train_student(student, teacher, context, data, params.train, params.distill, 42, tmp_path / "ckpt", resume)

    fit(resume=False)
    caplog.clear()
    caplog.set_level("INFO")
    fit(resume=True)
    assert "--resume: continuing from" in caplog.text and "checkpoint-2" in caplog.text


# --- 9: outputs readable by others ---------------------------------------------------------------

def test_model_folder_files_follow_the_umask(tmp_path):
    import torch

    previous = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "model") as staging:
            save_file({"w": torch.zeros(2)}, str(staging / "model.safetensors"))
            (staging / "sub").mkdir(mode=0o700)
            (staging / "sub" / "x.json").write_text("{}")
            (staging / "sub" / "x.json").chmod(0o600)
    finally:
        os.umask(previous)
    for path in [tmp_path / "model", *(tmp_path / "model").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))
