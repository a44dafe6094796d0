"""Shared fixtures: the shipped sample corpus and tiny CamemBERT teachers built offline.

Everything is built once per session under pytest's temp folder; nothing touches the hub.
"""
import os

# Before transformers or mlflow are imported by any test module: never reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from nerdistill.demo.teacher import build_demo_teacher, random_teacher, train_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def corpus_path() -> Path:
    """The shipped sample corpus, data/raw/corpus.txt."""
    return REPO / "data" / "raw" / "corpus.txt"


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, corpus_path: Path) -> Path:
    """A CamembertTokenizer folder (SentencePiece unigram, ~1000 pieces) trained on the sample corpus."""
    return train_tokenizer(corpus_path, tmp_path_factory.mktemp("fixtures") / "tokenizer")


@pytest.fixture(scope="session")
def random_teacher_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """Random CamembertForTokenClassification: 2 layers, hidden 32, 4 heads, the real teacher's IO labels."""
    return random_teacher(tokenizer_dir, tmp_path_factory.mktemp("fixtures") / "random_teacher",
                          num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64)


@pytest.fixture(scope="session")
def teacher6_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """Random 6-layer teacher of another width (hidden 48, 4 heads)."""
    return random_teacher(tokenizer_dir, tmp_path_factory.mktemp("fixtures") / "teacher6",
                          num_layers=6, hidden_size=48, num_heads=4, intermediate_size=96)


@pytest.fixture(scope="session")
def demo_teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained demo teacher (4 layers, hidden 64) that predicts real entities; about a minute."""
    return build_demo_teacher(tmp_path_factory.mktemp("fixtures") / "demo_teacher", seed=0)


# Enough phrases for every split and entity type, few enough to annotate in seconds.
ANNOTATED_LINES = 300


@pytest.fixture(scope="session")
def annotated_dir(tmp_path_factory: pytest.TempPathFactory, corpus_path: Path, demo_teacher_dir: Path) -> Path:
    """annotate.run with the demo teacher on the corpus's first 300 lines: train/val/test.jsonl,
    label2id.json (O, B/I- LOC, ORG, PER) and transitions.json, as data/annotated/ holds them."""
    from nerdistill.params_reader import params_from_dict
    from nerdistill.stages import annotate

    work = tmp_path_factory.mktemp("annotated")
    with corpus_path.open(encoding="utf-8") as corpus:
        head = [line for _, line in zip(range(ANNOTATED_LINES), corpus)]
    (work / "corpus.txt").write_text("".join(head), encoding="utf-8")
    params = params_from_dict({"teacher": {"model_name": str(demo_teacher_dir), "batch_size": 16}})
    annotate.run(params, corpus=work / "corpus.txt", out_dir=work / "data")
    return work / "data"


@pytest.fixture
def mlflow_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working folder with its own MLflow store, outside any DVC experiment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return tmp_path
