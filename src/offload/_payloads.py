"""A message as its job stores it: the JSON its class reads back, at every depth.

A field renamed in Python but kept on the wire (`Field(alias="customer")`) is stored by its
alias, the name a client sends and the worker validates; a model whose aliases are for
output only (`validate_by_alias=False`, a `serialization_alias` alone) is stored by its
fields' names. Which of the two a class takes is decided once per class, for its nested
models too, and a class that neither reads back is refused when its kind is declared.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

import typing_extensions
from pydantic import AliasChoices, BaseModel
from pydantic.fields import FieldInfo

from .errors import ConfigurationError

#: Per message class: whether it is stored by alias. (Computed fields are left out at
#: every depth: a model that forbids keys it does not declare would refuse them, and they
#: are made again as it is read.)
_BY_ALIAS: dict[type[BaseModel], bool] = {}


def payload_of(message: BaseModel) -> dict[str, Any]:
    """The JSON object a job of `message` stores (see the module's doc)."""
    by_alias = _stored_by_alias(type(message))
    return message.model_dump(mode="json", by_alias=by_alias, exclude_computed_fields=True)


def values_of(message: BaseModel) -> dict[str, Any]:
    """`payload_of`'s message as Python values, under the same keys: where a set or a time
    is, which the JSON object cannot tell."""
    by_alias = _stored_by_alias(type(message))
    return message.model_dump(mode="python", by_alias=by_alias, exclude_computed_fields=True)


def stored_key(cls: type[BaseModel], name: str) -> str:
    """The key field `name` of `cls` is stored under (its alias, or its name)."""
    by_alias = _stored_by_alias(cls)
    return (cls.model_fields[name].serialization_alias or name) if by_alias else name


def aliases_read(field: FieldInfo) -> list[str]:
    """The keys a field's validation alias reads (its choices', where it has several;
    none for a path into another key)."""
    read = field.validation_alias
    choices = read.choices if isinstance(read, AliasChoices) else [read]
    return [c for c in choices if isinstance(c, str)]


def _stored_by_alias(cls: type[BaseModel]) -> bool:
    """Whether `cls` is stored by alias: decided at its first use, kept once complete."""
    by_alias = _BY_ALIAS.get(cls)
    return _decide(cls) if by_alias is None else by_alias


def check(cls: type[BaseModel]) -> None:
    """Refuse a class whose stored payload would not validate back, by alias or by name.
    A class with a forward reference still unresolved (declared before a class it names)
    is decided at its first job instead: pydantic resolves the name where the message is
    built (rebuilding it here could take another class of that name).

    Raises:
        ConfigurationError: a field, at any depth, that neither way reads back.
    """
    if getattr(cls, "__pydantic_complete__", True):
        _decide(cls)


def _decide(cls: type[BaseModel]) -> bool:
    by_alias_fails = _unread(cls, by_alias=True, seen=set())
    if by_alias_fails is None:
        by_alias = True
    elif _unread(cls, by_alias=False, seen=set()) is None:
        by_alias = False
    else:
        where, stored, read = by_alias_fails
        raise ConfigurationError(
            f"{where} is stored as {stored!r} but read back only as "
            f"{' or '.join(map(repr, read)) or 'nothing'}: give it one alias for both "
            "(Field(alias=...)), or let its class read what it writes"
        )
    if getattr(cls, "__pydantic_complete__", True):  # (else its annotations may change)
        _BY_ALIAS[cls] = by_alias
    return by_alias


def _unread(cls: type, *, by_alias: bool, seen: set[type]) -> tuple[str, str, list[str]] | None:
    """The first field of `cls` (or of a model nested in it) whose stored key its class
    would not read back when dumped `by_alias` (or by name): where, the key, what reads."""
    seen.add(cls)
    fields, config = _fields_of(cls)
    alias_read = config.get("validate_by_alias", True) is not False
    name_read = bool(config.get("validate_by_name") or config.get("populate_by_name"))
    for name, field in fields.items():
        stored = (field.serialization_alias or name) if by_alias else name
        names: list[str] = []
        if field.validation_alias is None:
            names.append(name)
        else:
            if alias_read:
                names += aliases_read(field)
            if name_read:
                names.append(name)
        if stored not in names:
            return f"{cls.__name__}.{name}", stored, names
        for nested in _models_in(field.annotation):
            if nested not in seen:
                found = _unread(nested, by_alias=by_alias, seen=seen)
                if found is not None:
                    return found
    return None


def _fields_of(cls: type) -> tuple[dict[str, FieldInfo], Mapping[str, Any]]:
    """The fields and the configuration of a model, a pydantic dataclass or a TypedDict."""
    if issubclass(cls, BaseModel):
        return dict(cls.model_fields), cls.model_config
    config = getattr(cls, "__pydantic_config__", None) or {}
    found = getattr(cls, "__pydantic_fields__", None) if dataclasses.is_dataclass(cls) else None
    if found is not None:  # a pydantic dataclass
        return dict(found), config
    # a standard dataclass or a TypedDict: aliases only as Annotated fields
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:  # (a name only its module's own import-time scope knew)
        hints = {}
    if dataclasses.is_dataclass(cls):
        return {
            f.name: _field_info(hints.get(f.name), f.default) for f in dataclasses.fields(cls)
        }, config
    return {name: _field_info(hint) for name, hint in hints.items()}, config


def _field_info(annotation: object, default: object = dataclasses.MISSING) -> FieldInfo:
    """A field as pydantic reads an annotation (`Annotated[int, Field(alias="x")]`), and
    a default that may be a `Field(...)` of its own (a dataclass's `v: int = Field(...)`)."""
    if annotation is None or isinstance(annotation, str):
        return default if isinstance(default, FieldInfo) else FieldInfo(annotation=None)
    if isinstance(default, FieldInfo):
        given: FieldInfo = FieldInfo.from_annotated_attribute(annotation, default)  # type: ignore[arg-type]
        return given
    found: FieldInfo = FieldInfo.from_annotation(annotation)  # type: ignore[arg-type]
    return found


def _models_in(annotation: object) -> list[type]:
    """The models, pydantic dataclasses and TypedDicts an annotation holds, at any depth
    (`list[Address] | None`)."""
    if isinstance(annotation, type) and (
        issubclass(annotation, BaseModel)
        or dataclasses.is_dataclass(annotation)
        or typing_extensions.is_typeddict(annotation)  # (typing's misses its TypedDicts)
    ):
        return [annotation]
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or args:
        return [m for arg in args for m in _models_in(arg)]
    return []
