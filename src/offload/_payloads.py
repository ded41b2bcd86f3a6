"""A message as its job stores it: the JSON its class reads back, at every depth.

A field renamed in Python but kept on the wire (`Field(alias="customer")`) is stored by its
alias, the name a client sends and the worker validates; a model whose aliases are for
output only (`validate_by_alias=False`, a `serialization_alias` alone) is stored by its
fields' names. Which of the two a class takes is decided once per class, for its nested
models too, and a class that neither reads back is refused when its kind is declared.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import AliasChoices, BaseModel

from .errors import ConfigurationError

#: Per message class: whether it is stored by alias, and its computed fields (left out: a
#: message forbids a key it does not declare, and they are made again as it is read).
_HOW: dict[type[BaseModel], tuple[bool, frozenset[str]]] = {}


def payload_of(message: BaseModel) -> dict[str, Any]:
    """The JSON object a job of `message` stores (see the module's doc)."""
    cls = type(message)
    how = _HOW.get(cls) or _decide(cls)
    by_alias, computed = how
    if computed:
        return message.model_dump(mode="json", by_alias=by_alias, exclude=set(computed))
    return message.model_dump(mode="json", by_alias=by_alias)


def stored_key(cls: type[BaseModel], name: str) -> str:
    """The key field `name` of `cls` is stored under (its alias, or its name)."""
    by_alias, _ = _HOW.get(cls) or _decide(cls)
    return (cls.model_fields[name].serialization_alias or name) if by_alias else name


def check(cls: type[BaseModel]) -> None:
    """Refuse a class whose stored payload would not validate back, by alias or by name.

    Raises:
        ConfigurationError: a field, at any depth, that neither way reads back.
    """
    _decide(cls)


def _decide(cls: type[BaseModel]) -> tuple[bool, frozenset[str]]:
    by_alias_fails = _unread(cls, by_alias=True, seen=set())
    if by_alias_fails is None:
        by_alias = True
    elif _unread(cls, by_alias=False, seen=set()) is None:
        by_alias = False
    else:
        where, stored, read = by_alias_fails
        raise ConfigurationError(
            f"{where} is stored as {stored!r} but read back only as {read!r}: give it one "
            "alias for both (Field(alias=...)), or let its class read what it writes"
        )
    how = (by_alias, frozenset(cls.model_computed_fields))
    _HOW[cls] = how
    return how


def _unread(
    cls: type[BaseModel], *, by_alias: bool, seen: set[type[BaseModel]]
) -> tuple[str, str, object] | None:
    """The first field of `cls` (or of a model nested in it) whose stored key its class
    would not read back when dumped `by_alias` (or by name): where, the key, what reads."""
    seen.add(cls)
    config = cls.model_config
    alias_read = config.get("validate_by_alias", True) is not False
    name_read = bool(config.get("validate_by_name") or config.get("populate_by_name"))
    for name, field in cls.model_fields.items():
        stored = (field.serialization_alias or name) if by_alias else name
        read = field.validation_alias
        names: set[object] = set()
        if read is None:
            names.add(name)
        else:
            if alias_read:
                choices = read.choices if isinstance(read, AliasChoices) else [read]
                names.update(c for c in choices if isinstance(c, str))
            if name_read:
                names.add(name)
        if stored not in names:
            return f"{cls.__name__}.{name}", stored, read if alias_read else name
        for nested in _models_in(field.annotation):
            if nested not in seen:
                found = _unread(nested, by_alias=by_alias, seen=seen)
                if found is not None:
                    return found
    return None


def _models_in(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds, at any depth (`list[Address] | None`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or args:
        return [m for arg in args for m in _models_in(arg)]
    return []
