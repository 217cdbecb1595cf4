"""The two ways in (pip with pyproject.toml, conda with environment.yml) install the same things,
and the commands the README promises exist."""

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def conda_dependencies() -> dict[str, str]:
    """Every dependency line of environment.yml (conda and pip sections) -> its spec."""
    deps = {}
    text = (ROOT / "environment.yml").read_text()
    for line in text[text.index("dependencies:"):].splitlines():
        m = re.match(r"^\s+- ([A-Za-z0-9_.\-\[\]]+(?:[=<>!~]=?[^\s#]*)?)\s*$", line)
        if m and not m.group(1).endswith(":"):
            deps[_name(m.group(1))] = m.group(1)
    return deps


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    project = pyproject()["project"]
    wanted = {_name(d) for d in project["dependencies"] + project["optional-dependencies"]["dev"]}
    have = set(conda_dependencies()) - {"python", "pip"}
    assert wanted - have == set(), f"missing from environment.yml: {sorted(wanted - have)}"
    assert have - wanted == set(), f"in environment.yml but not in pyproject.toml: {sorted(have - wanted)}"


def test_torch_is_pinned_identically_in_both():
    project = pyproject()["project"]
    assert "torch==2.13.0" in project["dependencies"]
    assert conda_dependencies()["torch"] == "torch==2.13.0"


def test_conda_environment_uses_python_3_11():
    assert conda_dependencies()["python"] == "python=3.11"


def test_benchmark_peers_are_an_optional_extra_only():
    project = pyproject()["project"]
    core = {_name(d) for d in project["dependencies"]}
    assert {"transformers", "compressive-transformer-pytorch"} & core == set()
    assert "transformers" in {_name(d) for d in project["optional-dependencies"]["bench"]}


def test_ci_runs_the_test_command_that_the_readme_gives():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make lab" in readme
    assert re.search(r"^exec make test", ci, re.M)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: env", makefile, re.M) and re.search(r"^lab: env", makefile, re.M)
