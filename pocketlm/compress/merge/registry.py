"""Merge methods as data: a name, a pure per-tensor function and the parameters it takes.

A method's function sees one tensor name at a time: `fn(tensors, base, **params)`, where `tensors`
are the non-base inputs (or all inputs for methods that ignore the base), `base` the base model's
tensor or None, and each per-input parameter a list aligned with `tensors`. Parameter scopes follow
mergekit's, so a mergekit recipe resolves to the same values: `shared` (one value per tensor),
`input` (one per input model, the base included) and `non_base` (one per non-base input).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor

REQUIRED = object()


class MergeError(ValueError):
    """A merge that cannot run as asked: names the recipe field, model or tensor, and the fix."""


@dataclass(frozen=True)
class Param:
    name: str
    kind: type  # float, bool or int
    scope: str = "shared"  # shared | input | non_base
    default: Any = REQUIRED
    arg: str | None = None  # the function's keyword when the recipe's name is not an identifier ("lambda")

    @property
    def keyword(self) -> str:
        return self.arg or self.name

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def coerce(self, value: Any, where: str) -> Any:
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise MergeError(f"{where}: parameter {self.name!r} must be true or false, got {value!r}")
        try:
            return self.kind(float(value)) if self.kind is int else float(value)
        except (TypeError, ValueError):
            raise MergeError(f"{where}: parameter {self.name!r} must be a number, got {value!r}") from None


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[..., Tensor]
    params: tuple[Param, ...]
    base: str  # required | optional | ignored (the base is then merged like any other input)
    min_inputs: int = 1  # counting the base when the method uses it
    max_inputs: int | None = None
    random: bool = False  # takes a torch.Generator (DARE)
    reference_url: str = ""

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"merge method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    _load_all()
    if name not in METHODS:
        raise MergeError(f"merge_method {name!r} is not supported; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


def _load_all() -> None:
    """Import the method modules (each registers its methods)."""
    from pocketlm.compress.merge import linear, model_stock, passthrough, slerp, task_arithmetic  # noqa: F401
