"""Importing course_lib changes nothing global in the learner's process.

A notebook imports the course next to its own code: no hook may be installed into every
``nn.Module`` of the process, no torch switch turned, no thread count, default dtype, random
state or warnings filter changed. Each check runs in a fresh interpreter: the settings of torch,
numpy, Python and matplotlib are recorded, every course module is imported, and they are
recorded again. The libraries the course imports are imported before the first record (their own
import-time settings, torch's and numpy's warnings filters among them, are not the course's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: runs in the fresh interpreter: stdin holds a JSON list of modules to import before the first record
PROBE = r'''
import hashlib, importlib, json, os, pkgutil, random, sys, warnings


def value(get):
    try:
        return repr(get())
    except Exception as error:  # a setting this torch (or machine) does not have
        return f"unavailable ({type(error).__name__})"


def record():
    import torch
    import torch.nn.modules.module as module_hooks
    import torch.optim.optimizer as optimizer_hooks

    settings = {"warnings.filters": repr(warnings.filters)}  # before catch_warnings copies them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some getters below warn that they are deprecated
        settings.update({
            f"torch.nn.modules.module.{name}": value(lambda name=name: list(getattr(module_hooks, name).items())
                                                     if isinstance(getattr(module_hooks, name), dict)
                                                     else getattr(module_hooks, name))
            for name in dir(module_hooks) if name.startswith("_global_")})
        settings.update({
            f"torch.optim.optimizer.{name}": value(lambda name=name: list(getattr(optimizer_hooks, name).items()))
            for name in dir(optimizer_hooks) if name.startswith("_global_")})
        checks = {
            "torch.get_default_dtype()": torch.get_default_dtype,
            "torch.get_default_device()": torch.get_default_device,
            "torch.is_grad_enabled()": torch.is_grad_enabled,
            "torch.is_inference_mode_enabled()": torch.is_inference_mode_enabled,
            "torch.is_anomaly_enabled()": torch.is_anomaly_enabled,
            "torch.is_anomaly_check_nan_enabled()": torch.is_anomaly_check_nan_enabled,
            "torch.is_autocast_enabled('cpu')": lambda: torch.is_autocast_enabled("cpu"),
            "torch._C._get_mkldnn_enabled()": torch._C._get_mkldnn_enabled,
            "torch.get_num_threads()": torch.get_num_threads,
            "torch.get_num_interop_threads()": torch.get_num_interop_threads,
            "torch.are_deterministic_algorithms_enabled()": torch.are_deterministic_algorithms_enabled,
            "torch.is_deterministic_algorithms_warn_only_enabled()":
                torch.is_deterministic_algorithms_warn_only_enabled,
            "torch.get_float32_matmul_precision()": torch.get_float32_matmul_precision,
            "torch.is_warn_always_enabled()": torch.is_warn_always_enabled,
            "torch.backends.cudnn.enabled": lambda: torch.backends.cudnn.enabled,
            "torch.backends.cudnn.benchmark": lambda: torch.backends.cudnn.benchmark,
            "torch.backends.cudnn.deterministic": lambda: torch.backends.cudnn.deterministic,
            "torch.backends.cudnn.allow_tf32": lambda: torch.backends.cudnn.allow_tf32,
            "torch.backends.cuda.matmul.allow_tf32": lambda: torch.backends.cuda.matmul.allow_tf32,
            "torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction":
                lambda: torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
            "torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction":
                lambda: torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
            "torch.backends.cuda.matmul.fp32_precision": lambda: torch.backends.cuda.matmul.fp32_precision,
            "torch.backends.mkldnn.enabled": lambda: torch.backends.mkldnn.enabled,
            "torch.backends.mkldnn.fp32_precision": lambda: torch.backends.mkldnn.fp32_precision,
            "torch.backends.opt_einsum.enabled": lambda: torch.backends.opt_einsum.enabled,
            "torch.__future__ overwrite/swap on conversion": lambda: (
                torch.__future__.get_overwrite_module_params_on_conversion(),
                torch.__future__.get_swap_module_params_on_conversion()),
            "torch function/dispatch mode stacks": lambda: (
                torch._C._len_torch_function_stack(), torch._C._len_torch_dispatch_stack()),
            "torch print options": lambda: vars(torch._tensor_str.PRINT_OPTS),
            "torch random state": lambda: hashlib.sha1(torch.random.get_rng_state().numpy().tobytes()).hexdigest(),
            "python random state": lambda: hash(random.getstate()),
            "sys.getrecursionlimit()": sys.getrecursionlimit,
            "os.environ": lambda: sorted(os.environ.items()),
        }
        if "numpy" in sys.modules:
            import numpy as np
            checks.update({
                "numpy.geterr()": np.geterr,
                "numpy.get_printoptions()": np.get_printoptions,
                "numpy random state": lambda: hashlib.sha1(repr(np.random.get_state()).encode()).hexdigest(),
            })
        if "matplotlib" in sys.modules:  # read without resolving the 'auto' backend (that would pick one)
            checks["matplotlib.rcParams"] = lambda: sorted((k, repr(v)) for k, v in dict.items(
                sys.modules["matplotlib"].rcParams))
        settings.update({name: value(get) for name, get in checks.items()})
    return settings


for name in json.load(sys.stdin):
    try:
        importlib.import_module(name)
    except Exception:  # a private module that cannot be imported on its own: the course imports it anyway
        pass
known = set(sys.modules)
before = record()
import course_lib

course = ["course_lib"] + [m.name for m in pkgutil.walk_packages(course_lib.__path__, "course_lib.")
                           if not m.name.endswith("__main__")]
for name in course:
    importlib.import_module(name)
after = record()
imported = [name for name in sys.modules if name not in known and name.split(".")[0] != "course_lib"]
print(json.dumps({"course": course, "before": before, "after": after, "imported": imported}))
'''


def probe(preimport: list[str]) -> dict:
    env = {**os.environ, "COURSE_QUIET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBE], input=json.dumps(preimport), cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.slow  # two fresh interpreters, each importing torch and every course module: ~10 s
def test_importing_every_course_module_changes_no_global_setting():
    first = probe([])  # what the course imports besides itself ...
    run = probe(first["imported"])  # ... imported before the first record in a second fresh interpreter
    assert {"course_lib.decode", "course_lib.models", "course_lib.memory", "course_lib.widgets",
            "course_lib.grading", "course_lib.experiments.lesson08"} <= set(run["course"])
    changed = {name: (was, run["after"].get(name)) for name, was in run["before"].items()
               if run["after"].get(name) != was}
    assert not changed, "importing course_lib changed: " + "; ".join(
        f"{name}: {was} -> {now}" for name, (was, now) in changed.items())
    assert run["before"]["torch.nn.modules.module._global_parameter_registration_hooks"] == "[]"  # recorded
    assert run["before"]["torch.get_default_dtype()"] == "torch.float32"
