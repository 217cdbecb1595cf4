r"""A memory design as plain data: the one form every experiment, benchmark and grader uses.

A spec is a dict ``{"name": <registry name>, **constructor arguments}``, with
``"memories": [spec, ...]`` and ``"combine"`` for a ``multi`` memory, for example::

    {"name": "sink", "sinks": 4, "window": 12}
    {"name": "multi", "combine": "gate",
     "memories": [{"name": "window", "window": 32}, {"name": "delta", "beta": "learned"}]}

Plain data crosses process boundaries (worker processes, the grader's sandbox) and lands in
result files as it is. :func:`build_memory` turns a spec into a :class:`~course_lib.memory.Memory`,
:func:`spec_label` gives its short name in the book's symbols, :func:`spec_of` goes back from a
memory built by the registry's ``example()``.
"""

from __future__ import annotations

__all__ = ["build_memory", "spec_label", "check_spec", "spec_of"]

def check_spec(spec, where: str = "design") -> str:
    """The registry name of ``spec``, or a clear error naming ``where`` and what was expected."""
    from ..memory import MEMORIES

    if not isinstance(spec, dict):
        raise TypeError(f"{where} must be a dict such as {{'name': 'window', 'window': 32}}, got {type(spec).__name__}")
    name = spec.get("name")
    if name not in MEMORIES:
        # what it got first: a report that shortens a long message still shows the name that was wrong
        raise ValueError(f"{where}['name'] must be one of the registered memories, got {name!r}: {', '.join(MEMORIES)}")
    return name


def build_memory(spec: dict, *, n_heads: int | None = None, where: str = "design"):
    """The :class:`~course_lib.memory.Memory` that ``spec`` describes; ``n_heads`` fills in the
    per-head gate of a gated ``multi`` memory when the spec does not give it.

    >>> build_memory({"name": "sink", "sinks": 4, "window": 8})
    SinkMemory(sinks=4, window=8, positions='absolute')
    """
    from ..memory import make_memory

    name = check_spec(spec, where)
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "memories")}
    if name == "multi":
        parts = spec.get("memories")
        if not isinstance(parts, (list, tuple)) or len(parts) < 2:
            raise ValueError(f"a 'multi' {where} needs 'memories': a list of at least two designs")
        subs = [build_memory(p, n_heads=n_heads, where=f"{where}['memories'][{i}]") for i, p in enumerate(parts)]
        kwargs.setdefault("combine", "gate")
        if kwargs["combine"] == "gate" and n_heads is not None:
            kwargs.setdefault("n_heads", n_heads)
        return make_memory("multi", memories=subs, **kwargs)
    try:
        return make_memory(name, **kwargs)
    except TypeError as err:
        raise ValueError(f"{where} {spec!r}: {err}") from None


def spec_label(spec: dict) -> str:
    """A short name: ``sink S=4 n_c=12``, ``window n_c=32 + delta beta=learned (gate)``.

    The arguments the memory's class names in its ``symbols`` appear as ``symbol=value``, in the
    spec's order; its other string settings (``compress``, ``positions``) as their value.

    >>> spec_label({"name": "compressive", "mem_len": 8, "cmem_len": 8, "ratio": 2, "compress": "conv"})
    'compressive n_m=8 n_cm=8 c=2 conv'
    """
    from ..memory import memory_class

    name = check_spec(spec)
    if name == "multi":
        return " + ".join(spec_label(p) for p in spec["memories"]) + f" ({spec.get('combine', 'gate')})"
    symbols = memory_class(name).symbols
    sizes = " ".join(f"{symbols[k]}={v}" for k, v in spec.items() if k in symbols)
    extra = " ".join(v for k, v in spec.items() if k != "name" and k not in symbols and isinstance(v, str))
    return " ".join(x for x in (name, sizes, extra) if x)


def spec_of(memory) -> dict:
    """The spec of ``memory`` (its registry name and the constructor arguments it keeps)."""
    import inspect

    from torch import nn

    if memory.name == "multi":
        out = {"name": "multi", "combine": memory.combine, "memories": [spec_of(m) for m in memory.memories]}
        if memory.combine == "gate":
            out["n_heads"] = memory.n_heads
        return out
    out = {"name": memory.name}
    for p in inspect.signature(type(memory)).parameters:
        value = getattr(memory, p, None)
        if value is not None and not isinstance(value, (nn.Module, list)) and not hasattr(value, "shape"):
            out[p] = value
    return out
