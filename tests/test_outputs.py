"""The small helpers everything else writes and reports through: atomic writes and one-line error messages."""
from __future__ import annotations

import pytest

from compress1img.errors import first_line
from compress1img.outputs import atomic_write, atomic_write_text


def test_first_line_is_the_first_non_empty_line_stripped():
    assert first_line(RuntimeError("\n  \n  shapes do not match  \nat layer 3\n")) == "shapes do not match"


def test_first_line_of_an_empty_message_is_the_type_name():
    assert first_line(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert first_line(ValueError("  \n")) == "ValueError"
    assert first_line(ValueError(""), with_type=True) == "ValueError"


def test_first_line_can_name_the_type_and_cut_a_long_line():
    assert first_line(TypeError("bad operand\ntraceback follows"), with_type=True) == "TypeError: bad operand"
    cut = first_line(OSError("x" * 300), limit=200)
    assert len(cut) == 200 and cut.endswith("...")
    assert first_line(OSError("x" * 200), limit=200) == "x" * 200


def test_an_atomic_write_that_fails_leaves_neither_a_partial_file_nor_a_temp_file(tmp_path):
    def write_half(f):
        f.write(b"half of the new")
        raise KeyboardInterrupt  # Ctrl-C midway: not even an Exception

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "new.onnx", write_half)
    atomic_write_text(tmp_path / "report.json", "previous\n")
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "report.json", write_half)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    assert (tmp_path / "report.json").read_text() == "previous\n"


def test_an_atomic_write_creates_the_folder_and_gives_the_file_the_usual_permissions(tmp_path):
    atomic_write(tmp_path / "a" / "b" / "data.bin", lambda f: f.write(b"\x00\x01"))
    (tmp_path / "plain.bin").write_bytes(b"")
    assert (tmp_path / "a" / "b" / "data.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a" / "b" / "data.bin").stat().st_mode == (tmp_path / "plain.bin").stat().st_mode
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["data.bin"]
