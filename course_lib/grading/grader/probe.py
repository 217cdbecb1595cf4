"""The grader's probe interpreter: gradients and stop-gradients measured where no notebook code ran.

``python -m course_lib.grading.grader.probe`` is started by the grade command in the same sandbox
as the kernel (:func:`course_lib.grading.grader.sandbox.worker_argv`). Before it reads anything it
imports every lesson's checks and keeps its own references to the registered probes
(:func:`course_lib.grading.compare.probe`), so a notebook that replaces
``course_lib.grading.lessons.lesson05.detached_probe`` in its kernel, or an answer that does
so here while it runs, changes nothing the grader measures. Then, for each request on its
standard input (8 bytes of length, then a ``torch.save``): it rebuilds the learner's function
from its source and the names it uses (:func:`course_lib.grading.grader.remote.export_function`) in
a namespace of its own, runs ``probe(fn, args, ...)`` and ``fn(*args)`` on the same inputs,
and answers with data on the descriptor that was its standard output (the learner's prints
go to /dev/null).
"""

from __future__ import annotations

import builtins
import importlib
import io
import os
import sys


def _rebuild(desc: dict, depth: int = 0):
    namespace = {"__builtins__": builtins, "__name__": "__course_answer__"}
    for name, ref in dict(desc.get("globals", {})).items():
        try:
            if "module" in ref:
                namespace[name] = importlib.import_module(str(ref["module"]))
            elif "import" in ref:
                module, qualname = ref["import"]
                obj = importlib.import_module(str(module))
                for part in str(qualname).split("."):
                    obj = getattr(obj, part)
                namespace[name] = obj
            elif "function" in ref and depth < 8:
                namespace[name] = _rebuild(ref["function"], depth + 1)
            elif "value" in ref:
                namespace[name] = ref["value"]
        except Exception:  # a name that cannot be rebuilt here raises NameError when the answer uses it
            continue
    exec(compile(str(desc["source"]), "<the learner's answer>", "exec"), namespace)
    return namespace[str(desc["name"])]


def _placeholders(x):
    """Only data goes back; anything else as a placeholder (the grader compares kinds, not values)."""
    import torch

    from .remote import HANDLE, _is_data

    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        return t if type(t) is torch.Tensor else t.as_subclass(torch.Tensor)
    if type(x) in (list, tuple):
        return type(x)(_placeholders(v) for v in x)
    if type(x) is dict and all(type(k) in (str, int) for k in x):
        return {k: _placeholders(v) for k, v in x.items()}
    if _is_data(x):
        return x
    return {HANDLE: 0, "type": type(x).__name__, "callable": callable(x)}


def main() -> int:
    out_fd = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)
    in_fd = os.dup(0)
    os.dup2(null, 0)
    sys.stdout = open(os.devnull, "w")

    import torch

    from .. import compare
    from ..core import CheckTimeout, call_with_timeout
    from ..lessons import lesson_exercises, lesson_modules
    from .remote import MAX_MESSAGE, _loads, safe_name

    for lesson in lesson_modules():
        lesson_exercises(lesson)
    probes = dict(compare.PROBES)  # this interpreter's own references, taken before any answer ran
    save, loads, rebuild, placeholders, timed = torch.save, _loads, _rebuild, _placeholders, call_with_timeout

    def send(obj) -> None:
        buffer = io.BytesIO()
        save(obj, buffer)
        data = buffer.getvalue()
        view = memoryview(len(data).to_bytes(8, "little") + data)
        while view:
            view = view[os.write(out_fd, view):]

    def receive():
        def exactly(n):
            chunks, got = [], 0
            while got < n:
                chunk = os.read(in_fd, n - got)
                if not chunk:
                    return None
                chunks.append(chunk)
                got += len(chunk)
            return b"".join(chunks)

        header = exactly(8)
        if header is None:
            return None
        body = exactly(int.from_bytes(header, "little"))
        return None if body is None else loads(body)

    send({"ready": True})
    while True:
        request = receive()
        if request is None:
            return 0
        try:
            module, qualname = request["probe"]
            run = probes.get((str(module), str(qualname)))
            if run is None:
                raise ValueError(f"{module}.{qualname} is not a registered probe")
            fn = rebuild(request["function"])
            timeout = float(request.get("timeout") or 60.0)
            value = timed(lambda run=run, fn=fn, r=request: run(fn, *r["args"], **r["kwargs"]), timeout)
            plain = timed(lambda fn=fn, r=request: fn(*r["plain_args"]), timeout)
            response = {"value": placeholders(value), "plain": placeholders(plain)}
        except CheckTimeout:
            response = {"error": {"type": "CheckTimeout", "message": "", "timeout": True}}
        except BaseException as err:  # the learner's code raised
            if isinstance(err, KeyboardInterrupt):
                response = {"error": {"type": "CheckTimeout", "message": "interrupted", "timeout": True}}
            else:
                response = {"error": {"type": safe_name(type(err).__name__),
                                      "message": " ".join(str(err).split())[:MAX_MESSAGE]}}
        try:
            send(response)
        except Exception:
            send({"error": {"type": "BadAnswer", "message": "the probe's result is not data"}})


if __name__ == "__main__":
    sys.exit(main())
