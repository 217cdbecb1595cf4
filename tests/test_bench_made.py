"""course_lib.bench._made: the one sentence saying how a benchmark's result file was made."""

from course_lib.bench._made import commit_text, how_made, load_text

RESULT = {"command": "python -m course_lib bench x", "commit": "0123456789abcdef", "seconds": 12.6,
          "machine": {"processor": "", "cpu_count": 4, "torch": "2.5.1"}}


def test_a_dirty_tree_is_said_and_a_missing_commit_is_unknown():
    assert commit_text({**RESULT, "dirty": True}) == "0123456 with uncommitted changes"
    assert commit_text({"commit": None}) == "unknown"


def test_the_load_average_is_said_only_where_one_was_read():
    assert load_text(RESULT) == ""
    assert load_text({"load_average": {"before": None, "after": 2.0}}) == "; load average 2.0-2.0 during the run"
    assert load_text({"load_average": {"before": 3.04, "after": 0.5}}) == "; load average 0.5-3.0 during the run"


def test_the_sentence_names_command_commit_machine_setup_and_seconds():
    assert how_made(RESULT, "2 threads, float32") == (
        "`python -m course_lib bench x` at commit 0123456 (a CPU, 4 logical CPUs, torch 2.5.1, 2 threads, float32; "
        "13 s).")
