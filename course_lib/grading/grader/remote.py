"""Calling a learner's answer in another process, with only data crossing back.

The grade command runs the checks in its own process and the learner's notebook in a
sandboxed kernel. A check receives a :class:`RemoteCallable` (or :class:`RemoteObject`)
in place of the answer: calling it, calling its methods or reading its attributes sends a
request to the kernel, which runs the learner's code and answers with data only.

Both directions are files written with ``torch.save`` and read with
``torch.load(weights_only=True)``: tensors, numbers, strings, booleans, ``None``, and
lists, tuples and dicts of them. The grader writes each request into a folder the sandboxed
kernel can only read (created with ``O_EXCL | O_NOFOLLOW``, under a name it cannot guess),
and reads each response from the folder the kernel writes through a descriptor of that folder
opened once, with ``O_NOFOLLOW | O_NONBLOCK``, only if it is a regular file, and at most
:data:`MAX_RESPONSE_BYTES` of it: a link, a FIFO or a device planted there is refused, never
followed, waited on or read to its end. Anything else the learner's code returns (a model, a
cache, a function) stays in the kernel and comes back as a handle, wrapped here in a
proxy. Nothing the kernel sends is ever unpickled, so no code of the submission runs in
the grading process, and a kernel that lies can only hand back wrong data.

What cannot cross as data (gradients, whether a state was detached) is measured by a
*probe* (:func:`course_lib.grading.compare.probe`), which never runs in the kernel: the
kernel hands over its function as source text and the names it uses
(:func:`export_function`), and a fresh sandboxed interpreter (:mod:`course_lib.grading.grader.probe`),
which imported the probes before any of the learner's code, rebuilds it and runs the probe;
the grader then checks that the rebuilt function gives the values the kernel's gives.

:func:`serve` is the kernel's side (run by the request cell); :class:`Session` the
grader's; :class:`LoopbackTransport` serves requests in this process, through the same
files, so the tests can hold every check to the same rules cheaply.
"""

from __future__ import annotations

import importlib
import inspect
import io
import itertools
import os
import re
import secrets
import stat
import textwrap
import time
import types
from pathlib import Path

import torch

from ..core import CheckTimeout

__all__ = ["Session", "RemoteObject", "RemoteCallable", "RemoteError", "KernelGone", "serve", "LoopbackTransport"]

MAX_RESPONSE_BYTES = 64 * 2**20
MAX_NAME = 60  # characters of a learner's exception name that reach a report
MAX_MESSAGE = 300
HANDLE = "__course_remote__"
_PRIMITIVES = (bool, int, float, complex, str, bytes, type(None))


class RemoteError(Exception):
    """The learner's code raised in the kernel; ``remote_type`` is the name of its exception."""

    def __init__(self, remote_type: str, message: str):
        remote_type, message = safe_name(remote_type), str(message)[:MAX_MESSAGE]
        super().__init__(message)
        self.remote_type = remote_type


def safe_name(name) -> str:
    """A name the kernel sent, as a report may show it: identifier characters only, truncated."""
    cleaned = re.sub(r"[^\w.]", "", str(name))[:MAX_NAME]
    return cleaned or "Error"


_ERROR_CLASSES: dict[str, type] = {}


def remote_error(remote_type: str, message: str) -> RemoteError:
    """A :class:`RemoteError` that is also an instance of the built-in exception it names
    (``except ValueError`` in a check catches a ValueError the learner's code raised)."""
    import builtins

    remote_type = safe_name(remote_type)
    base = getattr(builtins, remote_type, None)
    if not (isinstance(base, type) and issubclass(base, Exception)) or issubclass(base, RemoteError):
        return RemoteError(remote_type, message)
    cls = _ERROR_CLASSES.get(remote_type)
    if cls is None:
        try:
            cls = type(f"Remote{remote_type}", (RemoteError, base), {"__init__": RemoteError.__init__,
                                                                    "__str__": lambda self: self.args[0]})
        except TypeError:  # a built-in that cannot be combined
            return RemoteError(remote_type, message)
        _ERROR_CLASSES[remote_type] = cls
    return cls(remote_type, message)


class KernelGone(Exception):
    """The kernel died or stopped answering: no further request can be served."""


# ---------------------------------------------------------------- data in both directions


def _dump(obj, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    Path(path).write_bytes(buffer.getvalue())


def _load(path: Path):
    """The kernel's side: read the grader's request (a file the kernel cannot write)."""
    return _loads(Path(path).read_bytes())


def _loads(data: bytes):
    value = torch.load(io.BytesIO(data), weights_only=True)
    _refuse_odd_tensors(value)
    return value


def _refuse_odd_tensors(x, depth: int = 0) -> None:
    """Only plain strided tensors cross (a sparse tensor with indices out of range loads, then breaks)."""
    if depth > 50:
        raise RemoteError("BadAnswer", "the answer is nested too deeply")
    if isinstance(x, torch.Tensor):
        if x.layout != torch.strided or x.is_quantized or x.is_meta:
            raise RemoteError("BadAnswer", f"the answer holds a {x.layout} tensor; return plain (strided) tensors")
    elif isinstance(x, (list, tuple)):
        for v in x:
            _refuse_odd_tensors(v, depth + 1)
    elif isinstance(x, dict):
        for v in x.values():
            _refuse_odd_tensors(v, depth + 1)


def read_bounded(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``fd``; raises when there are more."""
    chunks, total = [], 0
    while True:
        chunk = os.read(fd, min(2**20, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise RemoteError("ResponseTooLarge", f"the answer sent back more than {limit} bytes")


class Exchange:
    """The grader's two folders: ``requests`` (it writes; the sandbox binds it read-only) and
    ``responses`` (the kernel writes), each used through a descriptor opened once, so that
    replacing a folder by a link later changes nothing."""

    def __init__(self, requests: Path, responses: Path):
        self.requests, self.responses = Path(requests), Path(responses)
        for folder in (self.requests, self.responses):
            folder.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        self._req_fd = os.open(self.requests, flags)
        self._resp_fd = os.open(self.responses, flags)
        self._token = secrets.token_hex(8)

    def names(self, n: int) -> tuple[str, str]:
        return f"request-{n}-{self._token}.pt", f"response-{n}-{self._token}.pt"

    def write_request(self, name: str, data: bytes) -> Path:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(name, flags, 0o644, dir_fd=self._req_fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        return self.requests / name

    def read_response(self, name: str) -> bytes | None:
        """The response's bytes, None when there is none; refuses anything but a regular file."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(name, flags, dir_fd=self._resp_fd)
        except FileNotFoundError:
            return None
        except OSError as err:  # ELOOP: a symbolic link
            raise RemoteError("BadAnswer", f"the kernel's answer is not a plain file ({err.strerror})") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise RemoteError("BadAnswer", "the kernel's answer is not a plain file (a FIFO, device or folder)")
            if info.st_size > MAX_RESPONSE_BYTES:
                raise RemoteError("ResponseTooLarge",
                                  f"the answer sent back {info.st_size} bytes (at most {MAX_RESPONSE_BYTES})")
            return read_bounded(fd, MAX_RESPONSE_BYTES)
        finally:
            os.close(fd)

    def remove(self, request: str, response: str) -> None:
        for name, fd in ((request, self._req_fd), (response, self._resp_fd)):
            try:
                os.unlink(name, dir_fd=fd)  # unlink never follows a link
            except OSError:
                pass

    def close(self) -> None:
        for fd in (self._req_fd, self._resp_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._req_fd = self._resp_fd = -1

    def __del__(self):
        if getattr(self, "_req_fd", -1) >= 0:
            self.close()


def _is_data(x) -> bool:
    if isinstance(x, _PRIMITIVES) or isinstance(x, (torch.dtype, torch.device, torch.Size)):
        return True
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, (list, tuple)):
        return all(_is_data(v) for v in x)
    if isinstance(x, dict):
        return all(isinstance(k, (str, int)) and _is_data(v) for k, v in x.items())
    return False


# ---------------------------------------------------------------- the kernel's side

_HANDLES: dict[int, object] = {}
_COUNTER = itertools.count(1)


def _encode(x):
    """Kernel -> grader: data as it is (tensors as plain CPU tensors), anything else as a handle."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        t = t if type(t) is torch.Tensor else t.as_subclass(torch.Tensor)
        if t.layout == torch.strided and t.untyped_storage().nbytes() > t.numel() * t.element_size():
            t = t.clone()  # a view sends its own values, not the whole storage it looks into
        return t
    if type(x) in _PRIMITIVES:
        return x
    if isinstance(x, (torch.dtype, torch.device, torch.Size)):
        return x
    if type(x) in (list, tuple):
        return type(x)(_encode(v) for v in x)
    if type(x) is dict and all(type(k) in (str, int) for k in x):
        return {k: _encode(v) for k, v in x.items()}
    if type(x).__module__ == "numpy" and hasattr(x, "item") and getattr(x, "shape", None) == () \
            and getattr(x, "dtype", None) is not None and x.dtype.kind in "biuf":  # numpy scalars
        return x.item()
    handle = next(_COUNTER)
    _HANDLES[handle] = x
    return {HANDLE: handle, "type": type(x).__name__, "callable": callable(x)}


def handles() -> set[int]:
    """The handles this process holds for a grader (see :func:`release`)."""
    return set(_HANDLES)


def release(keep: set[int]) -> None:
    """Forget every handle not in ``keep`` (the objects a finished check made)."""
    for handle in set(_HANDLES) - set(keep):
        _HANDLES.pop(handle, None)


def _decode_request(x):
    """Grader -> kernel: handles back to the kernel's objects."""
    if isinstance(x, dict) and HANDLE in x:
        return _HANDLES[int(x[HANDLE])]
    if isinstance(x, (list, tuple)):
        return type(x)(_decode_request(v) for v in x)
    if isinstance(x, dict):
        return {k: _decode_request(v) for k, v in x.items()}
    return x


def _call_tracking_inputs(fn, args, kwargs, timeout):
    from ..core import call_with_timeout

    slots = [(i, a) for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    slots += [(k, a) for k, a in kwargs.items() if isinstance(a, torch.Tensor)]
    before = [a.clone() for _, a in slots]
    value = call_with_timeout(lambda: fn(*args, **kwargs), timeout) if timeout else fn(*args, **kwargs)
    modified = {key: a.detach().cpu() for (key, a), b in zip(slots, before)
                if a.shape != b.shape or not torch.equal(a, b)}
    return value, modified


def serve(request_path, response_path, namespace: dict) -> None:
    """Answer one request of the grader (run in the learner's kernel)."""
    from ..core import CheckTimeout as _Timeout

    try:
        request = _load(request_path)
        op = request["op"]
        modified = {}
        if op == "eval":
            value = eval(request["expr"], namespace)  # the expression of the notebook's own check call
        elif op == "getattr":
            value = getattr(_HANDLES[request["target"]], request["name"])
        elif op == "call":
            args = _decode_request(request["args"])
            kwargs = _decode_request(request["kwargs"])
            value, modified = _call_tracking_inputs(_HANDLES[request["target"]], args, kwargs, request["timeout"])
        elif op == "export":
            value = export_function(_HANDLES[request["target"]])
        elif op == "make":
            factory = importlib.import_module(request["module"])
            for part in request["name"].split("."):
                factory = getattr(factory, part)
            value = factory(*_decode_request(request["args"]), **_decode_request(request["kwargs"]))
        else:
            raise ValueError(f"unknown request {op!r}")
        response = {"value": _encode(value), "modified": modified}
        buffer = io.BytesIO()
        torch.save(response, buffer)
        if buffer.tell() > MAX_RESPONSE_BYTES:
            raise ValueError(f"the answer is {buffer.tell()} bytes as data, more than the grader reads "
                             f"({MAX_RESPONSE_BYTES})")
    except _Timeout:
        response = {"error": {"type": "CheckTimeout", "message": "", "timeout": True}}
    except BaseException as err:  # the learner's code raised: its name and message cross, nothing else
        if isinstance(err, KeyboardInterrupt):
            response = {"error": {"type": "CheckTimeout", "message": "interrupted", "timeout": True}}
        else:
            response = {"error": {"type": safe_name(type(err).__name__),
                                  "message": " ".join(str(err).split())[:MAX_MESSAGE],
                                  "not_implemented": isinstance(err, NotImplementedError)}}
    _dump(response, response_path)


def _names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


MAX_SOURCE = 200_000


def export_function(fn, depth: int = 0) -> dict:
    """``fn`` as data for a probe: its source and, for each global name it uses, the module, the
    importable object, the data, or the learner's own function (exported the same way) it names."""
    if not isinstance(fn, types.FunctionType):
        raise TypeError(f"this check re-runs the answer alone: it must be a function defined with def, "
                        f"got {type(fn).__name__}")
    if fn.__name__ == "<lambda>":
        raise TypeError("this check re-runs the answer alone: define it with def, not lambda")
    if fn.__closure__:
        raise TypeError("this check re-runs the answer alone: define it at the top level of a cell "
                        "(it uses variables of an enclosing function)")
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        raise TypeError("this check re-runs the answer alone and cannot find its source: define it with def "
                        "in a cell of the notebook") from None
    if len(source) > MAX_SOURCE:
        raise TypeError(f"the answer's source is longer than {MAX_SOURCE} characters")
    found = {}
    for name in sorted(_names(fn.__code__)):
        if name not in fn.__globals__:
            continue
        value = fn.__globals__[name]
        if value is fn:
            continue
        if isinstance(value, types.ModuleType):
            found[name] = {"module": value.__name__}
        elif isinstance(value, types.FunctionType) and value.__module__ == fn.__module__:
            if depth < 8:
                found[name] = {"function": export_function(value, depth + 1)}
        elif callable(value) and isinstance(getattr(value, "__module__", None), str) \
                and isinstance(getattr(value, "__qualname__", None), str) and value.__module__ != fn.__module__:
            found[name] = {"import": [value.__module__, value.__qualname__]}
        elif _is_data(value):
            found[name] = {"value": _encode(value)}
    return {"name": fn.__name__, "source": source, "globals": found}


# ---------------------------------------------------------------- the grader's side


class RemoteObject:
    """A handle to an object in the learner's kernel: reading an attribute asks the kernel."""

    __slots__ = ("_session", "_handle", "_type")

    def __init__(self, session, handle: int, type_name: str):
        object.__setattr__(self, "_session", session)
        object.__setattr__(self, "_handle", handle)
        object.__setattr__(self, "_type", type_name)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._session.request({"op": "getattr", "target": self._handle, "name": name})

    def __setattr__(self, name, value):
        raise AttributeError("a check cannot set attributes of the learner's objects")

    def __repr__(self):
        return f"<{self._type} in the learner's kernel>"


class RemoteCallable(RemoteObject):
    """A handle to a function, class or bound method in the learner's kernel."""

    __slots__ = ()

    def __call__(self, *args, **kwargs):
        return self._session.call(self._handle, args, kwargs)


class Session:
    """The grader's end: sends requests through ``transport`` and decodes the answers.

    ``transport(request_path, response_path, timeout)`` makes the kernel run :func:`serve`
    on the request; it raises :class:`CheckTimeout` when the kernel overstays and
    :class:`KernelGone` when it cannot answer any more. ``folder`` holds the exchange's
    ``requests`` and ``responses`` folders (or pass an :class:`Exchange`). ``prober`` runs
    probes (a :class:`ProbeWorker`); without one a probe runs where the answer lives, as in
    the learner's own notebook."""

    def __init__(self, transport, folder, prober=None):
        self.transport = transport
        if isinstance(folder, Exchange):
            self.exchange = folder
        else:
            folder = Path(folder)
            self.exchange = Exchange(folder / "requests", folder / "responses")
        self.prober = prober
        self.deadline: float | None = None  # the current check's (set by core)
        self.hard_deadline: float | None = None  # the whole grade's
        self._n = itertools.count(1)

    # what checks use (through the proxies)
    def answer(self, expr: str):
        return self.request({"op": "eval", "expr": expr})

    def call(self, handle: int, args, kwargs):
        args, kwargs = list(args), dict(kwargs)
        out = self.request({"op": "call", "target": handle, "args": self._encode(args),
                            "kwargs": self._encode(kwargs), "timeout": self._remaining()}, modified=(args, kwargs))
        return out

    def make(self, factory, args, kwargs):
        module, name = getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)
        if not module or not name or "<" in name:
            raise TypeError(f"compare.make needs an importable class or function, got {factory!r}")
        if getattr(factory, "__course_probe__", False) and self.prober is not None:
            return self.probe(factory, args, kwargs)
        return self.request({"op": "make", "module": module, "name": name, "args": self._encode(list(args)),
                             "kwargs": self._encode(dict(kwargs))})

    def probe(self, factory, args, kwargs):
        """``factory(fn, fn_args, *rest)`` in the probe interpreter, on the learner's function rebuilt
        there; then the rebuilt function and the kernel's must agree on ``fn(*fn_args)``."""
        args = list(args)
        if len(args) < 2 or not isinstance(args[0], RemoteCallable) or not isinstance(args[1], (list, tuple)):
            raise TypeError("a probe is called as probe(answer, [its arguments], ...)")
        fn, fn_args = args[0], list(args[1])
        self._start_prober()
        exported = self.request({"op": "export", "target": fn._handle})
        request = {"probe": [factory.__module__, factory.__qualname__], "function": exported,
                   "args": self._encode(args[1:]), "kwargs": self._encode(dict(kwargs)),
                   "plain_args": self._encode(fn_args), "timeout": self._remaining() or 60.0}
        response = self.prober.run(request, (self._remaining() or 60.0) + 5.0)
        mine = self.call(fn._handle, fn_args, {})
        if not _same(response.get("plain"), mine):
            raise RemoteError("InconsistentAnswer", "re-run alone, outside the notebook, the answer gave other "
                              "values than in the notebook: it must depend only on its arguments")
        return self._decode(response.get("value"))

    # plumbing
    def _start_prober(self) -> None:
        """Start the probe interpreter if it is not running, off the current check's clock: its
        start (importing torch and every lesson, seconds on a busy machine) is the grader's time,
        not the answer's, so it moves the check's deadline (never the whole grade's) by as long."""
        if self.prober.running:
            return
        start = time.monotonic()
        self.prober.start()
        if self.deadline is not None:
            self.deadline += time.monotonic() - start

    def _remaining(self) -> float:
        """Seconds left for the current check (0: no limit); the grade's own deadline caps it."""
        ends = [d for d in (self.deadline, self.hard_deadline) if d is not None]
        if not ends:
            return 0.0
        left = min(ends) - time.monotonic()
        if left <= 0:
            raise CheckTimeout()
        return left

    def _encode(self, x):
        if isinstance(x, RemoteObject):
            if x._session is not self:
                raise TypeError("a handle from another grading session")
            return {HANDLE: x._handle}
        if isinstance(x, (list, tuple)):
            return type(x)(self._encode(v) for v in x)
        if isinstance(x, dict):
            return {k: self._encode(v) for k, v in x.items()}
        if not _is_data(x):
            raise TypeError(f"a check may pass the answer data only (tensors, numbers, str, containers of them) "
                            f"or objects built with compare.make; got {type(x).__name__}")
        return x

    def _decode(self, x):
        if isinstance(x, dict) and HANDLE in x:
            cls = RemoteCallable if x.get("callable") else RemoteObject
            return cls(self, int(x[HANDLE]), safe_name(x.get("type", "object")))
        if isinstance(x, (list, tuple)):
            return type(x)(self._decode(v) for v in x)
        if isinstance(x, dict):
            return {k: self._decode(v) for k, v in x.items()}
        return x

    def request(self, request: dict, modified=None):
        n = next(self._n)
        req_name, resp_name = self.exchange.names(n)
        timeout = self._remaining()
        try:
            buffer = io.BytesIO()
            torch.save(request, buffer)
            req = self.exchange.write_request(req_name, buffer.getvalue())
            self.transport(req, self.exchange.responses / resp_name, timeout)
            data = self.exchange.read_response(resp_name)
            if data is None:
                raise RemoteError("NoAnswer", "the learner's kernel did not answer the grader's request")
            response = _loads(data)
        except (CheckTimeout, KernelGone, RemoteError):
            raise
        except Exception as err:  # a file that is not what serve writes
            detail = " ".join(str(err).split())[:120]
            raise RemoteError("BadAnswer", f"the learner's kernel sent back something unreadable ({detail})") from None
        finally:
            self.exchange.remove(req_name, resp_name)
        return self._response(response, modified)

    def _response(self, response, modified=None):
        if not isinstance(response, dict):
            raise RemoteError("BadAnswer", "the learner's kernel sent back something unreadable")
        if "error" in response:
            error = response["error"] if isinstance(response["error"], dict) else {}
            if error.get("timeout"):
                raise CheckTimeout()
            if error.get("not_implemented"):
                raise NotImplementedError(str(error.get("message", ""))[:MAX_MESSAGE])
            raise remote_error(str(error.get("type", "Error")), str(error.get("message", "")))
        if modified is not None:
            self._copy_back(response.get("modified") or {}, *modified)
        return self._decode(response.get("value"))

    @staticmethod
    def _copy_back(changes: dict, args: list, kwargs: dict) -> None:
        """In-place changes the learner's code made to tensor arguments, made to the grader's
        tensors too, so that ``compare.call_keeping_inputs`` sees them as it would locally."""
        if not isinstance(changes, dict):
            return
        for key, value in changes.items():
            target = args[key] if isinstance(key, int) and 0 <= key < len(args) else kwargs.get(key)
            if isinstance(target, torch.Tensor) and isinstance(value, torch.Tensor):
                if value.shape == target.shape and value.dtype == target.dtype:
                    target.copy_(value)
                else:
                    target.fill_(float("nan")) if target.is_floating_point() else target.zero_()


def _same(a, b) -> bool:
    """Data from the probe interpreter and from the kernel agree (tensors to float64 round-off)."""
    if isinstance(b, RemoteObject):  # something that stayed in the kernel: the probe's is a placeholder
        return isinstance(a, dict) and HANDLE in a
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape \
                or a.dtype != b.dtype:
            return False
        if a.dtype == torch.bool or not (a.is_floating_point() or a.is_complex()):
            return bool(torch.equal(a, b))
        return bool(torch.allclose(a.double(), b.double(), rtol=1e-6, atol=1e-9, equal_nan=True))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


class ProbeWorker:
    """The fresh interpreter probes run in (``python -m course_lib.grading.grader.probe`` in the sandbox):
    started on first use, it imports every probe before it reads a request; each request and
    response is a length-prefixed ``torch.save``, the response read with a time and size limit."""

    STARTUP_S = 180.0

    def __init__(self, argv: list[str], env: dict, cwd: str | None = None):
        self.argv, self.env, self.cwd = list(argv), dict(env), cwd
        self.process = None

    @property
    def running(self) -> bool:
        """Whether the interpreter is started and has not ended."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the interpreter and wait for it to be ready (up to :attr:`STARTUP_S`)."""
        import subprocess

        self.process = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, env=self.env, cwd=self.cwd,
                                        start_new_session=True)
        ready = self._read(self.STARTUP_S)
        if ready != {"ready": True}:
            self.close()
            raise RemoteError("ProbeFailed", "the grader's probe interpreter did not start")

    def run(self, request: dict, timeout: float) -> dict:
        if not self.running:
            self.start()
        buffer = io.BytesIO()
        torch.save(request, buffer)
        data = buffer.getvalue()
        try:
            self.process.stdin.write(len(data).to_bytes(8, "little") + data)
            self.process.stdin.flush()
        except OSError:
            self.close()
            raise RemoteError("ProbeFailed", "the probe interpreter ended while running the answer") from None
        response = self._read(timeout)
        if not isinstance(response, dict):
            self.close()
            raise RemoteError("BadAnswer", "the probe interpreter sent back something unreadable")
        if "error" in response:
            error = response["error"] if isinstance(response["error"], dict) else {}
            if error.get("timeout"):
                raise CheckTimeout()
            raise remote_error(str(error.get("type", "Error")), str(error.get("message", "")))
        return response

    def _read(self, timeout: float):
        import select

        fd = self.process.stdout.fileno()
        end = time.monotonic() + max(timeout, 0.1)

        def exactly(n: int) -> bytes:
            chunks, got = [], 0
            while got < n:
                left = end - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    self.close()
                    raise CheckTimeout()
                chunk = os.read(fd, min(n - got, 2**20))
                if not chunk:
                    self.close()
                    raise RemoteError("ProbeFailed", "the probe interpreter ended while running the answer")
                chunks.append(chunk)
                got += len(chunk)
            return b"".join(chunks)

        size = int.from_bytes(exactly(8), "little")
        if size > MAX_RESPONSE_BYTES:
            self.close()
            raise RemoteError("ResponseTooLarge", f"the probe sent back {size} bytes (at most {MAX_RESPONSE_BYTES})")
        try:
            return _loads(exactly(size))
        except (CheckTimeout, RemoteError):
            raise
        except Exception:
            self.close()
            raise RemoteError("BadAnswer", "the probe interpreter sent back something unreadable") from None

    def close(self) -> None:
        if self.process is not None:
            from .sandbox import kill_tree

            if self.process.poll() is None:
                kill_tree(self.process.pid)
            try:
                self.process.wait(timeout=10)
            except Exception:
                pass
            for stream in (self.process.stdin, self.process.stdout):
                try:
                    stream.close()
                except Exception:
                    pass
            self.process = None


class LoopbackTransport:
    """Serve requests in this process through the same files and decoding (for tests)."""

    def __init__(self, namespace: dict):
        self.namespace = namespace

    def __call__(self, request_path, response_path, timeout):
        serve(request_path, response_path, self.namespace)


def loopback_answer(answer, folder: Path):
    """``answer`` as a check would see it under the grade command, served in this process (probes too)."""
    session = Session(LoopbackTransport({"answer": answer}), folder)
    return session, session.answer("answer")


def remote_code(request_path: Path, response_path: Path) -> str:
    """The code of the cell that makes the kernel answer one request."""
    return ("__import__('course_lib.grading.grader.remote', fromlist=['serve']).serve("
            f"{os.fspath(request_path)!r}, {os.fspath(response_path)!r}, globals())")
