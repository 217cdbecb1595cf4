"""Calling a learner's answer in another process, with only data crossing back.

The grade command runs the checks in its own process and the learner's notebook in a
sandboxed kernel. A check receives a :class:`RemoteCallable` (or :class:`RemoteObject`)
in place of the answer: calling it, calling its methods or reading its attributes sends a
request to the kernel, which runs the learner's code and answers with data only.

Both directions are files written with ``torch.save`` and read with
``torch.load(weights_only=True)``: tensors, numbers, strings, booleans, ``None``, and
lists, tuples and dicts of them. Anything else the learner's code returns (a model, a
cache, a function) stays in the kernel and comes back as a handle, wrapped here in a
proxy. Nothing the kernel sends is ever unpickled, so no code of the submission runs in
the grading process, and a kernel that lies can only hand back wrong data.

:func:`serve` is the kernel's side (run by the request cell); :class:`Session` the
grader's; :class:`LoopbackTransport` serves requests in this process, through the same
files, so the tests can hold every check to the same rules cheaply.
"""

from __future__ import annotations

import importlib
import io
import itertools
import os
import time
from pathlib import Path

import torch

from .core import CheckTimeout

__all__ = ["Session", "RemoteObject", "RemoteCallable", "RemoteError", "KernelGone", "serve", "LoopbackTransport"]

MAX_RESPONSE_BYTES = 256 * 2**20
HANDLE = "__course_remote__"
_PRIMITIVES = (bool, int, float, complex, str, bytes, type(None))


class RemoteError(Exception):
    """The learner's code raised in the kernel; ``remote_type`` is the name of its exception."""

    def __init__(self, remote_type: str, message: str):
        super().__init__(message)
        self.remote_type = remote_type


_ERROR_CLASSES: dict[str, type] = {}


def remote_error(remote_type: str, message: str) -> RemoteError:
    """A :class:`RemoteError` that is also an instance of the built-in exception it names
    (``except ValueError`` in a check catches a ValueError the learner's code raised)."""
    import builtins

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
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_RESPONSE_BYTES:
        raise RemoteError("ResponseTooLarge", f"the answer sent back {size} bytes (at most {MAX_RESPONSE_BYTES})")
    return torch.load(io.BytesIO(path.read_bytes()), weights_only=True)


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
        return t if type(t) is torch.Tensor else t.as_subclass(torch.Tensor)
    if type(x) in _PRIMITIVES:
        return x
    if isinstance(x, (torch.dtype, torch.device, torch.Size)):
        return x
    if type(x) in (list, tuple):
        return type(x)(_encode(v) for v in x)
    if type(x) is dict and all(type(k) in (str, int) for k in x):
        return {k: _encode(v) for k, v in x.items()}
    if hasattr(x, "__index__") and type(x).__module__ == "numpy":  # numpy integers and floats
        return x.item()
    if type(x).__module__ == "numpy" and hasattr(x, "item") and getattr(x, "shape", None) == ():
        return x.item()
    handle = next(_COUNTER)
    _HANDLES[handle] = x
    return {HANDLE: handle, "type": type(x).__name__, "callable": callable(x)}


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
    from .core import call_with_timeout

    slots = [(i, a) for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    slots += [(k, a) for k, a in kwargs.items() if isinstance(a, torch.Tensor)]
    before = [a.clone() for _, a in slots]
    value = call_with_timeout(lambda: fn(*args, **kwargs), timeout) if timeout else fn(*args, **kwargs)
    modified = {key: a.detach().cpu() for (key, a), b in zip(slots, before)
                if a.shape != b.shape or not torch.equal(a, b)}
    return value, modified


def serve(request_path, response_path, namespace: dict) -> None:
    """Answer one request of the grader (run in the learner's kernel)."""
    from .core import CheckTimeout as _Timeout

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
        elif op == "make":
            factory = importlib.import_module(request["module"])
            for part in request["name"].split("."):
                factory = getattr(factory, part)
            value = factory(*_decode_request(request["args"]), **_decode_request(request["kwargs"]))
        else:
            raise ValueError(f"unknown request {op!r}")
        response = {"value": _encode(value), "modified": modified}
    except _Timeout:
        response = {"error": {"type": "CheckTimeout", "message": "", "timeout": True}}
    except BaseException as err:  # the learner's code raised: its name and message cross, nothing else
        if isinstance(err, KeyboardInterrupt):
            response = {"error": {"type": "CheckTimeout", "message": "interrupted", "timeout": True}}
        else:
            response = {"error": {"type": type(err).__name__, "message": " ".join(str(err).split())[:500],
                                  "not_implemented": isinstance(err, NotImplementedError)}}
    _dump(response, response_path)


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

    @staticmethod
    def _course_make(answer, factory, args, kwargs):  # used by compare.make
        return answer._session.make(factory, args, kwargs)

    @property
    def _course_type_name(self):
        return self._type


class RemoteCallable(RemoteObject):
    """A handle to a function, class or bound method in the learner's kernel."""

    __slots__ = ()

    def __call__(self, *args, **kwargs):
        return self._session.call(self._handle, args, kwargs)


class Session:
    """The grader's end: sends requests through ``transport`` and decodes the answers.

    ``transport(request_path, response_path, timeout)`` makes the kernel run :func:`serve`
    on the request; it raises :class:`CheckTimeout` when the kernel overstays and
    :class:`KernelGone` when it cannot answer any more."""

    def __init__(self, transport, folder: Path):
        self.transport = transport
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.deadline: float | None = None
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
        return self.request({"op": "make", "module": module, "name": name, "args": self._encode(list(args)),
                             "kwargs": self._encode(dict(kwargs))})

    # plumbing
    def _remaining(self) -> float:
        if self.deadline is None:
            return 0.0
        left = self.deadline - time.monotonic()
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
            return cls(self, int(x[HANDLE]), str(x.get("type", "object")))
        if isinstance(x, (list, tuple)):
            return type(x)(self._decode(v) for v in x)
        if isinstance(x, dict):
            return {k: self._decode(v) for k, v in x.items()}
        return x

    def request(self, request: dict, modified=None):
        n = next(self._n)
        req, resp = self.folder / f"request-{n}.pt", self.folder / f"response-{n}.pt"
        timeout = self._remaining()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)  # the kernel may have deleted it
            _dump(request, req)
            self.transport(req, resp, timeout)
            if not resp.exists():
                raise RemoteError("NoAnswer", "the learner's kernel did not answer the grader's request")
            response = _load(resp)
        except (CheckTimeout, KernelGone, RemoteError):
            raise
        except Exception as err:  # a file that is not what serve writes
            raise RemoteError("BadAnswer", f"the learner's kernel sent back something unreadable ({err})") from None
        finally:
            for p in (req, resp):
                try:
                    p.unlink()
                except OSError:
                    pass
        if not isinstance(response, dict):
            raise RemoteError("BadAnswer", "the learner's kernel sent back something unreadable")
        if "error" in response:
            error = response["error"] if isinstance(response["error"], dict) else {}
            if error.get("timeout"):
                raise CheckTimeout()
            if error.get("not_implemented"):
                raise NotImplementedError(str(error.get("message", "")))
            raise remote_error(str(error.get("type", "Error")), str(error.get("message", "")))
        if modified is not None:
            self._copy_back(response.get("modified") or {}, *modified)
        return self._decode(response.get("value"))

    @staticmethod
    def _copy_back(changes: dict, args: list, kwargs: dict) -> None:
        """In-place changes the learner's code made to tensor arguments, made to the grader's
        tensors too, so that ``compare.call_keeping_inputs`` sees them as it would locally."""
        for key, value in changes.items():
            target = args[key] if isinstance(key, int) and key < len(args) else kwargs.get(key)
            if isinstance(target, torch.Tensor) and isinstance(value, torch.Tensor):
                if value.shape == target.shape and value.dtype == target.dtype:
                    target.copy_(value)
                else:
                    target.fill_(float("nan")) if target.is_floating_point() else target.zero_()


class LoopbackTransport:
    """Serve requests in this process through the same files and decoding (for tests)."""

    def __init__(self, namespace: dict):
        self.namespace = namespace

    def __call__(self, request_path, response_path, timeout):
        serve(request_path, response_path, self.namespace)


def loopback_answer(answer, folder: Path):
    """``answer`` as a check would see it under the grade command, served in this process."""
    session = Session(LoopbackTransport({"answer": answer}), folder)
    return session, session.answer("answer")


def remote_code(request_path: Path, response_path: Path) -> str:
    """The code of the cell that makes the kernel answer one request."""
    return ("__import__('course_lib.grading.remote', fromlist=['serve']).serve("
            f"{os.fspath(request_path)!r}, {os.fspath(response_path)!r}, globals())")
