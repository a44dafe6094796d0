"""Peak memory of annotate and of distill's data loading as the corpus grows: it should stay flat.

For each corpus size N, a corpus of N distinct lines is made from the sample corpus (its lines in
turn, each with its line number appended, so none is a repeat), and a fresh Python process runs

- `annotate`: `stages.annotate.run` with the teacher given (the demo teacher by default) on it;
- `data`: distill's data path without a model, on an annotated folder of N records (the sample's
  annotated records in turn, renumbered, split 80/10/10): `data.load_training_data` with the
  params.yaml window (student.max_length, teacher.stride), then one epoch of shuffled collated
  train batches (train.batch_size) and the val batches.

Each child reports its resident-set high-water mark (Linux VmHWM: that process image only, not a
parent's pages), once its imports are done and at its end, and its wall time. Prints one JSON object:
figures per stage and N, and each stage's ratio of the largest N's peak to the smallest's.

    python scripts/rss_probe.py --annotate-lines 20000 50000 --data-lines 20000 200000
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CORPUS = REPO / "data" / "raw" / "corpus.txt"
SAMPLE_ANNOTATED = REPO / "data" / "annotated"
SPLIT_SHARES = (("train", 8), ("val", 1), ("test", 1))  # of every 10 records


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status: this probe reads Linux's per-process figures")


def peak_rss_mb() -> float:
    return status_mb("VmHWM")


class RssTrace:
    """VmRSS sampled on a thread while the block runs: the peak of each quarter of the run says
    whether memory climbs as lines are read (it should not) or sits on a plateau."""

    def __init__(self, every_s: float = 0.1) -> None:
        self.every_s, self.samples, self._done = every_s, [], threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(self.every_s):
            self.samples.append(status_mb("VmRSS"))

    def __enter__(self) -> RssTrace:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def quarters(self) -> list[float]:
        size = max(1, len(self.samples) // 4)
        return [round(max(self.samples[i * size:(i + 1) * size] or [0.0]), 1) for i in range(4)]


def make_corpus(lines: int, path: Path) -> Path:
    sample = [line for line in SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    with path.open("w", encoding="utf-8") as out:
        for number, line in zip(range(lines), itertools.cycle(sample)):
            out.write(f"{line} ({number})\n")
    return path


def make_annotated(records: int, folder: Path) -> Path:
    """`records` annotated records, the sample's in turn with new ids, as annotate writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    sample = [line for name, _ in SPLIT_SHARES
              for line in (SAMPLE_ANNOTATED / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
    for name in ("label2id.json", "transitions.json"):
        (folder / name).write_bytes((SAMPLE_ANNOTATED / name).read_bytes())
    outs = {name: (folder / f"{name}.jsonl").open("w", encoding="utf-8") for name, _ in SPLIT_SHARES}
    cycle = [name for name, share in SPLIT_SHARES for _ in range(share)]
    for number, line in zip(range(records), itertools.cycle(sample)):
        outs[cycle[number % len(cycle)]].write(json.dumps({**json.loads(line), "id": str(number)}, ensure_ascii=False)
                                               + "\n")
    for out in outs.values():
        out.close()
    return folder


def child_annotate(corpus: Path, out: Path, teacher: str) -> dict[str, float]:
    from nerdistill.params_reader import params_from_dict
    from nerdistill.stages import annotate

    imported = peak_rss_mb()
    with RssTrace() as trace:
        annotate.run(params_from_dict({"teacher": {"model_name": teacher}}), corpus, out)
    return {"import_rss_mb": imported, "peak_rss_mb": peak_rss_mb(), "rss_by_quarter_mb": trace.quarters()}


def child_data(folder: Path, teacher: str) -> dict[str, float]:
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer

    from nerdistill.annotated import AnnotatedDir
    from nerdistill.data import load_training_data
    from nerdistill.params_reader import load_params
    from nerdistill.stages import distill  # noqa: F401 (distill's own imports: the baseline a real run has)

    imported = peak_rss_mb()
    params = load_params(REPO / "params.yaml")
    data = load_training_data(AnnotatedDir(folder), AutoTokenizer.from_pretrained(teacher), params.student.max_length,
                              params.teacher.stride)
    built = peak_rss_mb()
    windows = 0
    with RssTrace() as trace:
        for dataset, shuffle in ((data.train, True), (data.val, False)):
            for batch in DataLoader(dataset, batch_size=params.train.batch_size, shuffle=shuffle,
                                    collate_fn=data.collator):
                windows += len(batch["input_ids"])
    return {"import_rss_mb": imported, "built_rss_mb": built, "peak_rss_mb": peak_rss_mb(), "windows": windows,
            "rss_by_quarter_mb": trace.quarters()}


def measure(stage: str, lines: int, work: Path, teacher: str) -> dict[str, float]:
    if stage == "annotate":
        args = [str(make_corpus(lines, work / f"corpus_{lines}.txt")), str(work / f"annotated_{lines}")]
    else:
        args = [str(make_annotated(lines, work / f"records_{lines}"))]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", stage, "--teacher", teacher, *args],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{stage} on {lines} lines failed with exit status {done.returncode}:\n"
                           f"{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {**figures, "lines": lines, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotate-lines", type=int, nargs="*", default=[20_000, 200_000])
    parser.add_argument("--data-lines", type=int, nargs="*", default=[20_000, 200_000])
    parser.add_argument("--teacher", default=str(REPO / "models" / "demo_teacher"),
                        help="teacher folder (`nerdistill demo-teacher --out models/demo_teacher` builds the default)")
    parser.add_argument("--child", choices=["annotate", "data"], help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "annotate":
        print(json.dumps(child_annotate(*args.paths, args.teacher)))
        return
    if args.child == "data":
        print(json.dumps(child_data(*args.paths, args.teacher)))
        return
    report: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="rss-probe-") as scratch:
        for stage, sizes in (("annotate", args.annotate_lines), ("data", args.data_lines)):
            runs = [measure(stage, lines, Path(scratch), args.teacher) for lines in sorted(sizes)]
            for run in runs:
                print(f"{stage} {run['lines']} lines: peak {run['peak_rss_mb']:.0f} MB "
                      f"(imports {run['import_rss_mb']:.0f} MB), {run['seconds']} s", file=sys.stderr)
            if runs:
                report[stage] = {"runs": runs, "peak_ratio": round(runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"], 3)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
