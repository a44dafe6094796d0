"""scripts/real_data.py: the corpus/gold split of the real WikiNEuRal file (no teacher needed).

The data is not shipped with the project (CC BY-NC-SA); the tests that read it skip when
../shared/data/wikineural-fr-val.conllu is absent.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nerdistill.metrics import read_conll
from nerdistill.text import split_words

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "real_data.py"
WIKINEURAL = REPO.parent / "shared" / "data" / "wikineural-fr-val.conllu"
CUT, GOLD = 40, 25

needs_data = pytest.mark.skipif(not WIKINEURAL.is_file(), reason=f"{WIKINEURAL} absent (real data is not shipped)")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real_data")
    done = _run(str(WIKINEURAL), str(out), "--max-sentences", str(CUT), "--gold-sentences", str(GOLD))
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def source() -> list:
    return read_conll(WIKINEURAL)


@pytest.mark.realdata
@needs_data
def test_gold_file_round_trips_the_unseen_sentences(split_dir: Path, source: list) -> None:
    gold = read_conll(split_dir / "gold_test.conll")
    assert gold == source[CUT:CUT + GOLD]
    assert any(tag != "O" for _, tags in gold for tag in tags)


@pytest.mark.realdata
@needs_data
def test_corpus_holds_the_sentences_before_the_cut_and_none_after(split_dir: Path, source: list) -> None:
    lines = (split_dir / "corpus.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == CUT
    resplit = [[word.text for word in split_words(line)] for line in lines]
    matching = sum(words == expected for words, (expected, _) in zip(resplit, source[:CUT]))
    # Elided words are glued back ("d'un"), so split_words returns the file's own tokens almost always.
    assert matching >= 0.9 * CUT
    gold_sentences = {tuple(words) for words, _ in read_conll(split_dir / "gold_test.conll")}
    corpus_sentences = {tuple(words) for words, _ in source[:CUT]}
    assert not gold_sentences & corpus_sentences
    assert not gold_sentences & {tuple(words) for words in resplit}
    summary = json.loads((split_dir / "split.json").read_text(encoding="utf-8"))
    assert summary["corpus_resplit_mismatches"] == CUT - matching
    assert (summary["corpus_sentences"], summary["gold_sentences"]) == (CUT, GOLD)


@pytest.mark.realdata
@needs_data
def test_corpus_sentences_caps_the_corpus_not_the_cut(tmp_path: Path, source: list) -> None:
    done = _run(str(WIKINEURAL), str(tmp_path), "--max-sentences", str(CUT), "--corpus-sentences", "10",
                "--gold-sentences", "5")
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / "corpus.txt").read_text(encoding="utf-8").splitlines()) == 10
    assert read_conll(tmp_path / "gold_test.conll") == source[CUT:CUT + 5]


def test_missing_conll_skips_without_writing(tmp_path: Path) -> None:
    done = _run(str(tmp_path / "absent.conllu"), str(tmp_path / "out"))
    assert done.returncode == 0
    assert "not found" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.realdata
@needs_data
def test_cut_beyond_the_file_is_refused(tmp_path: Path) -> None:
    done = _run(str(WIKINEURAL), str(tmp_path), "--max-sentences", "1000000")
    assert done.returncode != 0
    assert "leaves no gold sentence" in done.stderr
