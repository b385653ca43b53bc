"""Name -> implementation registries (threestudio style): a typo fails loudly.

A typed pluggable part (a guidance term, a representation, a captioner) is declared once:

    @GUIDANCES.config("sds")              # in the part's light `configs` module
    class SDSParams(Strict): ...

    @GUIDANCES.implements(SDSParams)      # beside it, in the module that runs it
    class SDS(Guidance): ...

The name is written once, on the config model; the implementation is found through the
config model, so the two can never disagree. Config models live in light modules (pydantic
only) because every stage validates the whole params file: were they in the implementation
files, every stage would import (and DVC-depend on) every implementation.
"""
from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

from pydantic import BaseModel, ValidationError

T = TypeVar("T")
C = TypeVar("C", bound=type)


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._configs: dict[str, type[BaseModel]] = {}

    # --- untyped parts (name -> implementation) ---------------------------------------
    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    # --- typed parts (name -> config model -> implementation) -------------------------
    def config(self, name: str) -> Callable[[C], C]:
        """Declare `name` with the config model its `<part>` block is validated against."""
        def deco(model: C) -> C:
            if name in self._configs:
                raise ValueError(f"{self.kind} {name!r} declared twice")
            self._configs[name] = model
            model.registered_name = name
            return model

        return deco

    def implements(self, model: type[BaseModel]) -> Callable[[T], T]:
        """Attach the implementation of the part whose config model is `model`."""
        name = getattr(model, "registered_name", None)
        if self._configs.get(name) is not model:
            raise ValueError(f"{model.__name__} is not a declared {self.kind} config")
        return self.register(name)

    def config_model(self, name: str) -> type[BaseModel]:
        try:
            return self._configs[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {self.names()}") from None

    def validate(self, name: str, block: dict[str, Any] | None, where: str,
                 type_key: str | None = None) -> BaseModel:
        """The typed config of part `name` from its raw block `where`; a ValueError naming
        every wrong key as `where.<key>` (unknown keys are reported as typos). `type_key` is
        the params key that chose `name` (e.g. representation_type), for the message."""
        type_key = type_key or self.kind
        if name not in self._configs:
            raise ValueError(f"{type_key} {name!r} is not registered; known: {self.names()}")
        try:
            return self._configs[name].model_validate(block or {})
        except ValidationError as err:
            problems = "; ".join(
                f"{where}.{'.'.join(map(str, e['loc']))}: "
                + ("unknown key (typo?)" if e["type"] == "extra_forbidden" else e["msg"])
                for e in err.errors())
            raise ValueError(f"{problems} ({type_key} {name!r})") from None

    # --- lookup -----------------------------------------------------------------------
    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        if name in self._configs:
            raise KeyError(f"{self.kind} {name!r} is declared but its implementation was not "
                           f"imported (import the module that defines it)")
        raise KeyError(f"unknown {self.kind} {name!r}; registered: {self.names()}")

    def names(self) -> list[str]:
        return sorted(set(self._items) | set(self._configs))

    def __contains__(self, name: str) -> bool:
        return name in self._items or name in self._configs
