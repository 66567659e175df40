"""A JSON codec for in-memory analysis state (checkpoints), never pickle.

Checkpoints go to ``chorus-snapshots``, a topic other tools can read, so they must be
data, not code: this codec writes plain JSON and, when reading, only builds objects of
chorus-lab's own classes (``chorus_lab.*``) and a few standard containers. Any other class
named in the input is refused, so a crafted checkpoint cannot run anything.

Object identity is kept: an object reachable twice (say an edge in a dict and in a heap)
is written once with an id and referenced after, so the restored graph of objects has the
same shape. Dicts keep their order; floats keep ``inf`` and ``nan``.

>>> from collections import deque
>>> from datetime import datetime, UTC
>>> shared = [1.5, float("inf")]
>>> state = {"a": shared, "b": shared, ("x", 1): deque([datetime(2026, 1, 1, tzinfo=UTC)], maxlen=3)}
>>> back = loads(dumps(state))
>>> back["a"] is back["b"], back[("x", 1)].maxlen, back == state
(True, 3, True)
>>> loads('{"C": "os:system", "A": {}}')
Traceback (most recent call last):
...
ValueError: checkpoint names class os:system, which is not a chorus_lab class: refusing to build it
"""

from __future__ import annotations

import enum
import importlib
import json
import math
import sys
from collections import OrderedDict, deque
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

_ATOMS = (str, int, bool, type(None))
_BUILTIN_CLASSES: dict[str, type] = {"collections:OrderedDict": OrderedDict}


def dumps(obj: Any) -> str:
    """``obj`` as compact JSON text."""
    return json.dumps(to_data(obj), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def loads(text: str | bytes) -> Any:
    """The object :func:`dumps` wrote."""
    return from_data(json.loads(text))


def to_data(obj: Any) -> Any:
    """``obj`` as JSON-able data (see the module docstring)."""
    shared = _shared_ids(obj)
    return _Encoder(shared).encode(obj)


def from_data(data: Any) -> Any:
    """The object :func:`to_data` described."""
    return _Decoder().decode(data)


def _is_container(obj: Any) -> bool:
    return isinstance(obj, list | dict | set | deque) or _is_custom(obj)


def _is_custom(obj: Any) -> bool:
    return type(obj).__module__.startswith("chorus_lab") or type(obj) is OrderedDict


def _shared_ids(root: Any) -> set[int]:
    """Ids of mutable objects reachable more than once (written once, then referenced)."""
    seen: set[int] = set()
    shared: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if isinstance(obj, _ATOMS) or isinstance(obj, float | datetime | timedelta | enum.Enum):
            continue
        if _is_container(obj):
            if id(obj) in seen:
                shared.add(id(obj))
                continue
            seen.add(id(obj))
        if isinstance(obj, dict | MappingProxyType):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset | deque):
            stack.extend(obj)
        if _is_custom(obj) and not isinstance(obj, tuple):
            stack.extend(_attributes(obj).values())
    return shared


def _attributes(obj: Any) -> dict[str, Any]:
    """Instance attributes, from ``__dict__`` and every ``__slots__`` of the class's MRO."""
    values: dict[str, Any] = {}
    for cls in reversed(type(obj).__mro__):
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            if hasattr(obj, name):
                values[name] = getattr(obj, name)
    values.update(getattr(obj, "__dict__", {}))
    return values


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class _Encoder:
    def __init__(self, shared: set[int]) -> None:
        self.shared = shared
        self.ids: dict[int, int] = {}

    def encode(self, obj: Any) -> Any:
        if isinstance(obj, bool | int | str) or obj is None:
            return obj
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"F": repr(obj)}
        if isinstance(obj, datetime):
            return {"dt": obj.isoformat()}
        if isinstance(obj, timedelta):
            return {"td": obj.total_seconds()}
        if isinstance(obj, enum.Enum):
            return {"C": _class_name(type(obj)), "E": self.encode(obj.value)}
        key = id(obj)
        if key in self.ids:
            return {"R": self.ids[key]}
        tag: dict[str, Any] = {}
        if key in self.shared:
            self.ids[key] = len(self.ids)
            tag["I"] = self.ids[key]
        cls = type(obj)
        if cls is list:
            if not tag:
                return [self.encode(item) for item in obj]
            tag["L"] = [self.encode(item) for item in obj]
        elif cls is tuple:
            tag["T"] = [self.encode(item) for item in obj]
        elif cls is dict:
            tag["D"] = self._items(obj)
        elif cls is set or cls is frozenset:
            tag["set" if cls is set else "fset"] = [self.encode(item) for item in obj]
        elif cls is MappingProxyType:  # read-only settings tables of the configs
            tag["P"] = self._items(dict(obj))
        elif cls is deque:
            tag["Q"] = [self.encode(item) for item in obj]
            tag["maxlen"] = obj.maxlen
        elif _is_custom(obj):
            tag["C"] = _class_name(cls)
            if isinstance(obj, tuple):
                tag["T"] = [self.encode(item) for item in obj]
            else:
                tag["A"] = {name: self.encode(value) for name, value in _attributes(obj).items()}
                if isinstance(obj, dict):
                    tag["D"] = self._items(obj)
                elif isinstance(obj, list):
                    tag["L"] = [self.encode(item) for item in obj]
        else:
            raise TypeError(f"cannot checkpoint a {_class_name(cls)}: only plain data and chorus_lab classes are supported")
        return tag

    def _items(self, mapping: dict[Any, Any]) -> Any:
        if all(type(k) is str for k in mapping):
            return {k: self.encode(v) for k, v in mapping.items()}
        return [[self.encode(k), self.encode(v)] for k, v in mapping.items()]


class _Decoder:
    def __init__(self) -> None:
        self.objects: dict[int, Any] = {}

    def decode(self, data: Any) -> Any:
        if isinstance(data, list):
            return [self.decode(item) for item in data]
        if not isinstance(data, dict):
            return data
        if "F" in data:
            return float(data["F"])
        if "dt" in data:
            return datetime.fromisoformat(data["dt"])
        if "td" in data:
            return timedelta(seconds=data["td"])
        if "R" in data:
            return self.objects[data["R"]]
        if "E" in data:
            return _load_class(data["C"])(self.decode(data["E"]))
        ident = data.get("I")
        if "C" in data:
            cls = _load_class(data["C"])
            if "T" in data:
                return self._remember(ident, cls(*[self.decode(item) for item in data["T"]]))
            obj = cls.__new__(cls)
            self._remember(ident, obj)
            for name, value in data.get("A", {}).items():
                object.__setattr__(obj, name, self.decode(value))
            if "D" in data:
                # OrderedDict keeps its order in a structure of its own, which only its
                # own methods maintain (its subclasses' __setitem__ may evict or re-order).
                setitem = OrderedDict.__setitem__ if isinstance(obj, OrderedDict) else dict.__setitem__
                if isinstance(obj, OrderedDict):
                    OrderedDict.__init__(obj)
                for k, v in self._pairs(data["D"]):
                    setitem(obj, k, v)
            if "L" in data:
                list.extend(obj, [self.decode(item) for item in data["L"]])
            return obj
        if "L" in data:
            out: list[Any] = self._remember(ident, [])
            out.extend(self.decode(item) for item in data["L"])
            return out
        if "T" in data:
            return tuple(self.decode(item) for item in data["T"])
        if "D" in data:
            mapping: dict[Any, Any] = self._remember(ident, {})
            mapping.update(self._pairs(data["D"]))
            return mapping
        if "set" in data:
            items: set[Any] = self._remember(ident, set())
            items.update(self.decode(item) for item in data["set"])
            return items
        if "P" in data:
            return MappingProxyType(dict(self._pairs(data["P"])))
        if "fset" in data:
            return frozenset(self.decode(item) for item in data["fset"])
        if "Q" in data:
            queue: deque[Any] = self._remember(ident, deque(maxlen=data["maxlen"]))
            queue.extend(self.decode(item) for item in data["Q"])
            return queue
        raise ValueError(f"checkpoint holds an object this codec did not write: keys {sorted(data)[:5]}")

    def _pairs(self, items: Any) -> list[tuple[Any, Any]]:
        if isinstance(items, dict):
            return [(k, self.decode(v)) for k, v in items.items()]
        return [(self.decode(k), self.decode(v)) for k, v in items]

    def _remember(self, ident: int | None, obj: Any) -> Any:
        if ident is not None:
            self.objects[ident] = obj
        return obj


def _load_class(name: str) -> type:
    if name in _BUILTIN_CLASSES:
        return _BUILTIN_CLASSES[name]
    module_name, _, qualname = name.partition(":")
    if not (module_name == "chorus_lab" or module_name.startswith("chorus_lab.")):
        raise ValueError(f"checkpoint names class {name}, which is not a chorus_lab class: refusing to build it")
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ValueError(f"checkpoint names {name}, which is not a class")
    return obj


__all__ = ["dumps", "from_data", "loads", "to_data"]
