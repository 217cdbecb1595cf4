"""Execute notebooks in place with the project's own kernel, as ``make notebooks`` does.

The stored outputs are what strict nbval compares later, so they are produced here by
a real run, never pasted. The run uses the same environment as ``make test``
(``COURSE_DEVICE=cpu``, ``COURSE_QUIET=1``) so that the stored outputs are reproducible.

    python -m course_lib.tools.execute_notebooks [PATH ...]

Without paths: every notebook in notebooks/ and solutions/.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST_ENV = {"COURSE_DEVICE": "cpu", "COURSE_QUIET": "1", "PYTHONHASHSEED": "0"}


def execute(path: Path, timeout: int = 600) -> float:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    nb.metadata.pop("widgets", None)  # widget state is not compared and only bloats diffs
    nbformat.write(nb, path)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.update(TEST_ENV)
    paths = [Path(p) for p in argv] or sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted(
        (ROOT / "solutions").glob("*.ipynb"))
    for path in paths:
        seconds = execute(path.resolve())
        print(f"{path}: executed in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
