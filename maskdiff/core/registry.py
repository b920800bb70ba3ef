"""A name -> class table: the one registry behind ``SAMPLERS`` and ``MASKERS``
(docs/architecture.md §6: adding a sampler or a masker is one decorated class)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(dict[str, type[T]], Generic[T]):
    """A dict of classes keyed by their ``name`` attribute, with a decorator that fills it and a
    builder that instantiates by name; both refuse what would silently shadow or misspell."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, cls: type[T]) -> type[T]:
        name = cls.name  # type: ignore[attr-defined]
        if name in self:
            raise ValueError(f"a {self.kind} named {name!r} is already registered")
        self[name] = cls
        return cls

    def build(self, name: str, **kwargs: Any) -> T:
        if name not in self:
            raise ValueError(f"unknown {self.kind} name={name!r}; registered: {sorted(self)}")
        return self[name](**kwargs)
