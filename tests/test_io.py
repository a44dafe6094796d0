"""Atomic writes: an interrupted write leaves the old file or folder untouched and no temp files; and the
line reader every text input shares."""
import os
import stat

import pytest

from nerdistill.io import InputError, atomic_dir, numbered_lines, read_jsonl, utf8_lines, write_json


def test_interrupted_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed")
    assert not (tmp_path / "model").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_atomic_dir_replaces_whole_folder_with_normal_permissions(tmp_path):
    target = tmp_path / "model"
    for content in ("one", "two"):
        with atomic_dir(target) as tmp:
            (tmp / "weights").write_text(content)
    assert (target / "weights").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o777 & ~umask
    assert stat.S_IMODE(os.stat(target / "weights").st_mode) == 0o666 & ~umask


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": \n')
    with pytest.raises(InputError, match=r"x\.jsonl:3: malformed JSON"):
        list(read_jsonl(path))
    path.write_bytes(b'{"a": 1}\n\xff\n')
    with pytest.raises(InputError, match=r"x\.jsonl:2: not valid UTF-8"):
        list(read_jsonl(path))


def test_numbered_lines_drops_the_bom_strips_line_ends_and_reports_bad_bytes():
    source = [b"\xef\xbb\xbfun\r\n", b"\xef\xbb\xbfdeux\n", b"caf\xe9\r\n", b"", b"fin"]
    assert list(numbered_lines(source)) == [
        (1, "un", None),
        (2, "\ufeffdeux", None),  # only line 1 may start with a byte-order mark; later it is text
        (3, None, "not valid UTF-8 (byte 3 of the line)"),
        (4, "", None),
        (5, "fin", None),
    ]


def test_utf8_lines_reads_crlf_and_raises_on_bad_bytes_with_file_and_line(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"\xef\xbb\xbfun\r\ndeux\r\ncaf\xe9\r\n")
    lines = utf8_lines(path)
    assert [next(lines), next(lines)] == [(1, "un"), (2, "deux")]
    with pytest.raises(InputError, match=r"c\.txt:3: not valid UTF-8 \(byte 3 of the line\); re-encode .*iconv"):
        next(lines)
