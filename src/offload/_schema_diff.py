"""Where a JSON Schema accepts less than an older one did: the narrowings between two schemas
of one message, each at the path of the field it concerns.

A newer schema is compatible when every instance the older one accepted still validates
(stored payloads are read by the newer code): it may drop constraints, widen types (an
integer is a number), add union members and enum values, and add optional properties; it
may not remove a property, add a required one, or tighten anything. Keywords whose
inclusion cannot be decided (a changed `pattern` or `format`) count as narrowings.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

Schema = dict[str, Any]

#: Length and size bounds: a newer schema may lower a minimum and raise a maximum.
LOWER_BOUNDS = ("minLength", "minItems", "minProperties")
UPPER_BOUNDS = ("maxLength", "maxItems", "maxProperties")
#: Keywords whose addition or change narrows in a way no check can weigh (regex inclusion).
OPAQUE_KEYWORDS = ("pattern", "format")
#: The JSON type of each Python value a schema's `enum` or `const` may hold.
_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
    (type(None), "null"),
)


@dataclass(frozen=True, slots=True)
class Narrowing:
    """One way a newer schema refuses what an older one accepted."""

    #: The field: `period`, `address.city`, `sizes[]` (its items), `tags.*` (a map's
    #: values); empty for the message itself.
    path: str
    detail: str


def narrowings(old: Schema, new: Schema) -> list[Narrowing]:
    """What `new` refuses that `old` accepted (empty: every old instance still validates).

    Args:
        old, new: JSON Schemas as pydantic writes them; each resolves its own `$ref`s
            against its own `$defs`.

    Raises:
        ValueError: a `$ref` that does not resolve.
    """
    return _Comparison(old, new).node(old, new, "")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _json_type(value: Any) -> str:
    return next(name for cls, name in _JSON_TYPES if isinstance(value, cls))


def _types(node: Schema) -> set[str] | None:
    """The JSON types `node` admits; None for any."""
    declared = node.get("type")
    if isinstance(declared, str):
        return {declared}
    if isinstance(declared, list):
        return set(declared)
    values = _values(node)
    if values is not None:
        return {_json_type(v) for v in values}
    return None


def _values(node: Schema) -> list[Any] | None:
    """The only values `node` admits (`enum`, `const`); None when it names none."""
    if "const" in node:
        return [node["const"]]
    enum = node.get("enum")
    return list(enum) if isinstance(enum, list) else None


def _accepts_type(types: set[str], wanted: str) -> bool:
    return wanted in types or (wanted == "integer" and "number" in types)


def _shown(types: set[str]) -> str:
    return " or ".join(sorted(types))


def _canonical(value: Any) -> str:
    """A value's identity in JSON (True is not 1 there)."""
    return f"{_json_type(value)}:{value!r}"


def _alternatives(node: Schema) -> list[Any]:
    """The members of a union (`anyOf`, `oneOf`, a list of types); [node] for no union."""
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list):
            return list(node[key])
    declared = node.get("type")
    if isinstance(declared, list) and len(declared) > 1:
        return [{**node, "type": t} for t in declared]
    return [node]


@dataclass(frozen=True, slots=True)
class _Bound:
    """A numeric bound: its value and whether the value itself is excluded."""

    value: float
    exclusive: bool

    def shown(self, below: bool) -> str:
        sign = ("<" if below else ">") + ("" if self.exclusive else "=")
        return f"{sign} {self.value}"


def _bound(node: Schema, inclusive: str, exclusive: str, *, lower: bool) -> _Bound | None:
    """The tightest of a node's inclusive and exclusive bound on one side."""
    found = [_Bound(node[inclusive], False)] if isinstance(node.get(inclusive), int | float) else []
    if isinstance(node.get(exclusive), int | float):
        found.append(_Bound(node[exclusive], True))
    if not found:
        return None
    # The tighter bound: the greater minimum (the smaller maximum); exclusive wins a tie.
    sign = 1 if lower else -1
    return max(found, key=lambda b: (sign * b.value, b.exclusive))


def _tighter(new: _Bound, old: _Bound | None, *, lower: bool) -> bool:
    if old is None:
        return True
    if new.value != old.value:
        return new.value > old.value if lower else new.value < old.value
    return new.exclusive and not old.exclusive


class _Comparison:
    """One comparison of two schemas: their roots resolve `$ref`s, and the pairs of
    definitions under comparison stop a recursive model from recursing forever."""

    def __init__(self, old_root: Schema, new_root: Schema) -> None:
        self.roots = (old_root, new_root)
        self.active: set[tuple[str, str]] = set()

    def resolve(self, node: Any, side: int) -> tuple[Any, str | None]:
        """The node with `$ref`s (and one-member `allOf`s) replaced by what they name; the
        last reference followed, if any."""
        ref = None
        for _ in range(64):  # a chain of references this long loops
            if not isinstance(node, dict):
                return node, ref
            rest = {k: v for k, v in node.items() if k not in ("$ref", "allOf")}
            if isinstance(node.get("$ref"), str):
                ref = node["$ref"]
                node = {**self.lookup(ref, side), **rest}
            elif isinstance(node.get("allOf"), list) and len(node["allOf"]) == 1:
                node = {**node["allOf"][0], **rest}
            else:
                return node, ref
        raise ValueError(f"the schema's references loop at {ref}")

    def lookup(self, ref: str, side: int) -> Any:
        node: Any = self.roots[side]
        if not ref.startswith("#"):
            raise ValueError(f"cannot resolve {ref!r}: only references inside the schema")
        for part in filter(None, ref[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"cannot resolve {ref!r}")
            node = node[part]
        return node

    def node(self, old: Any, new: Any, path: str) -> list[Narrowing]:
        old, old_ref = self.resolve(old, 0)
        new, new_ref = self.resolve(new, 1)
        if old is False or new is True:
            return []
        if new is False:
            return [Narrowing(path, "accepts nothing any more")]
        old = {} if old is True else old
        if not isinstance(old, dict) or not isinstance(new, dict):
            raise ValueError(f"{path or 'the message'}: a schema is an object or a boolean")
        if old_ref is None or new_ref is None:
            return self.union(old, new, path)
        pair = (old_ref, new_ref)
        if pair in self.active:  # a recursive model: this pair is being compared above
            return []
        self.active.add(pair)
        try:
            return self.union(old, new, path)
        finally:
            self.active.discard(pair)

    def union(self, old: Schema, new: Schema, path: str) -> list[Narrowing]:
        """Every member of an old union must be accepted by some member of the new one."""
        old_members = _alternatives(old)
        if len(old_members) > 1:
            return [found for member in old_members for found in self.node(member, new, path)]
        new_members = _alternatives(new)
        if len(new_members) == 1:
            return self.single(old, new, path)
        tried = []
        for member in new_members:
            found = self.node(old, member, path)
            if not found:
                return []
            resolved = self.resolve(member, 1)[0]
            tried.append((_types(resolved) if isinstance(resolved, dict) else None, found))
        # Name the problems of the closest member of old's own type (the variant of a
        # tagged union that changed, the bound that tightened), if one is; else the type
        # that no member accepts.
        old_types = _types(old)
        same_type = [
            found
            for member_types, found in tried
            if old_types is not None
            and member_types is not None
            and all(_accepts_type(member_types, t) for t in old_types)
        ]
        if same_type:
            return min(same_type, key=len)
        known = [types for types, _ in tried if types is not None]
        if len(known) == len(tried):
            return self.types(old, {"type": sorted(set().union(*known))}, path) or tried[0][1]
        return tried[0][1]

    def single(self, old: Schema, new: Schema, path: str) -> list[Narrowing]:
        lost = self.types(old, new, path)
        if lost:
            return lost  # its constraints matter no more once the type itself is refused
        found = [*self.values(old, new, path), *self.bounds(old, new, path)]
        found += self.opaque(old, new, path)
        found += self.objects(old, new, path)
        found += self.arrays(old, new, path)
        return found

    def types(self, old: Schema, new: Schema, path: str) -> list[Narrowing]:
        old_types, new_types = _types(old), _types(new)
        if new_types is None:
            return []
        if old_types is None:
            return [Narrowing(path, f"now limited to type {_shown(new_types)}")]
        lost = {t for t in old_types if not _accepts_type(new_types, t)}
        if not lost:
            return []
        if lost == {"null"}:
            return [Narrowing(path, "no longer accepts null")]
        narrowed = all(_accepts_type(old_types, t) for t in new_types)
        verb = "narrowed" if narrowed else "changed"
        return [Narrowing(path, f"type {verb} from {_shown(old_types)} to {_shown(new_types)}")]

    def values(self, old: Schema, new: Schema, path: str) -> list[Narrowing]:
        new_values = _values(new)
        if new_values is None:
            return []
        old_values = _values(old)
        if old_values is None:
            return [Narrowing(path, f"now limited to the values {new_values}")]
        kept = {_canonical(v) for v in new_values}
        lost = [v for v in old_values if _canonical(v) not in kept]
        return [Narrowing(path, f"enum lost values {lost}")] if lost else []

    def bounds(self, old: Schema, new: Schema, path: str) -> list[Narrowing]:
        found = []
        for keyword, lower in (
            *((k, True) for k in LOWER_BOUNDS),
            *((k, False) for k in UPPER_BOUNDS),
        ):
            was, now = old.get(keyword), new.get(keyword)
            if now is None or (was is not None and (now <= was if lower else now >= was)):
                continue
            what = (
                f"{keyword} {now} added"
                if was is None
                else f"{keyword} tightened from {was} to {now}"
            )
            found.append(Narrowing(path, what))
        for inclusive, exclusive, lower in (
            ("minimum", "exclusiveMinimum", True),
            ("maximum", "exclusiveMaximum", False),
        ):
            was_b = _bound(old, inclusive, exclusive, lower=lower)
            now_b = _bound(new, inclusive, exclusive, lower=lower)
            if now_b is None or not _tighter(now_b, was_b, lower=lower):
                continue
            side = "lower" if lower else "upper"
            shown = now_b.shown(below=not lower)
            what = (
                f"{side} bound {shown} added"
                if was_b is None
                else f"{side} bound tightened from {was_b.shown(below=not lower)} to {shown}"
            )
            found.append(Narrowing(path, what))
        return found + self.multiples(old, new, path)

    def multiples(self, old: Schema, new: Schema, path: str) -> list[Narrowing]:
        found = []
        now, was = new.get("multipleOf"), old.get("multipleOf")
        if now is not None and (was is None or Fraction(str(was)) % Fraction(str(now))):
            found.append(Narrowing(path, f"multipleOf {now} {'added' if was is None else 'set'}"))
        if new.get("uniqueItems") and not old.get("uniqueItems"):
            found.append(Narrowing(path, "uniqueItems added"))
        return found

    def opaque(self, old: Schema, new: Schema, path: str) -> list[Narrowing]:
        found = []
        for keyword in OPAQUE_KEYWORDS:
            if keyword in new and new[keyword] != old.get(keyword):
                what = "added" if keyword not in old else f"changed from {old[keyword]!r} to"
                found.append(Narrowing(path, f"{keyword} {what} {new[keyword]!r}"))
        return found

    def objects(self, old: Schema, new: Schema, path: str) -> list[Narrowing]:
        old_props: Schema = old.get("properties", {})
        new_props: Schema = new.get("properties", {})
        new_extra = new.get("additionalProperties", True)
        found = []
        for name, schema in old_props.items():
            if name in new_props:
                found += self.node(schema, new_props[name], _join(path, name))
            elif isinstance(new_extra, dict):  # a model turned into a map: its values' type
                found += self.node(schema, new_extra, _join(path, name))
            else:
                found.append(Narrowing(_join(path, name), "removed (or renamed)"))
        was_required = set(old.get("required", ()))
        for name in new.get("required", ()):
            if name in was_required:
                continue
            what = (
                "became required" if name in old_props else "new required field without a default"
            )
            found.append(Narrowing(_join(path, name), what))
        return found + self.extras(old, new, path)

    def extras(self, old: Schema, new: Schema, path: str) -> list[Narrowing]:
        """Keys beyond the named properties (`additionalProperties`: a map's values)."""
        was, now = old.get("additionalProperties", True), new.get("additionalProperties", True)
        if now is False and was is not False:
            return [Narrowing(path, "no longer accepts extra fields")]
        if isinstance(now, dict):
            return self.node(was if isinstance(was, dict) else {}, now, _join(path, "*"))
        return []

    def arrays(self, old: Schema, new: Schema, path: str) -> list[Narrowing]:
        found = []
        old_items, new_items = old.get("items", True), new.get("items", True)
        old_prefix: list[Any] = old.get("prefixItems", [])
        new_prefix: list[Any] = new.get("prefixItems", [])
        for i, schema in enumerate(new_prefix):
            was = old_prefix[i] if i < len(old_prefix) else old_items
            found += self.node(was, schema, f"{path}[{i}]")
        if new_items is True:
            return found
        for i in range(len(new_prefix), len(old_prefix)):  # a tuple's places, now items
            found += self.node(old_prefix[i], new_items, f"{path}[{i}]")
        old_max = old.get("maxItems")
        if old_max is None or old_max > len(old_prefix):  # old arrays went past their prefix
            found += self.node(old_items, new_items, f"{path}[]")
        return found
