"""The command line: doctor reports and fails loudly; bench decode prints a table and a PNG."""

import json
import subprocess
import sys

import pytest

from course_lib import doctor
from course_lib.__main__ import main


def test_doctor_reports_versions_device_and_widgets(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for word in ("torch", "ipywidgets", "device:", "all good"):
        assert word in out


def test_doctor_json_is_machine_readable(capsys):
    main(["doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["device"]["name"] in {"cpu", "cuda", "mps"}


def test_doctor_fails_with_the_fix_in_words_when_a_package_is_missing(monkeypatch, capsys):
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda name: None if name == "ipywidgets" else real(name))
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "ipywidgets is missing" in out and "make lab" in out


def test_doctor_reports_an_impossible_course_device(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_DEVICE", "cuda:7" if not __import__("torch").cuda.is_available() else "nonsense")
    assert main(["doctor"]) == 1
    assert "COURSE_DEVICE" in capsys.readouterr().out


def test_pick_device_honours_course_device(monkeypatch):
    from course_lib import pick_device

    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert pick_device().type == "cpu"
    monkeypatch.setenv("COURSE_DEVICE", "gpu-please")
    with pytest.raises(ValueError, match="gpu-please"):
        pick_device()


def test_bench_decode_prints_a_table_and_saves_a_plot(tmp_path):
    out = tmp_path / "decode.png"
    result = subprocess.run(
        [sys.executable, "-m", "course_lib", "bench", "decode", "--contexts", "16,64", "--steps", "2",
         "--d-model", "32", "--layers", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "ms/token against context length" in result.stdout
    assert "full" in result.stdout and out.stat().st_size > 1000
