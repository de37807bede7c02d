"""Reading spec files: YAML with line numbers, and pydantic errors turned into field paths."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from controller.spec.errors import SpecError, SpecInvalid, describe
from controller.spec.gpubudget import GPUBudgetManifest
from controller.spec.params import PARAM_TYPES
from controller.spec.study import (
    NAME_PATTERN,
    PYTHON_ENTRY_PATTERN,
    QUANTITY_PATTERN,
    STUDY_NAME_PATTERN,
    StudyManifest,
    StudySpec,
)

Loc = tuple[str | int, ...]
_UNION_MEMBER_TAGS = {"bool", "int", "float", "str", "none"}
_PATTERN_FORMS = {
    STUDY_NAME_PATTERN: "a valid study name (lowercase letters, digits and '-', "
    "starting and ending with a letter or digit, at most 50 characters)",
    PYTHON_ENTRY_PATTERN: "a Python callable written module:function (e.g. train:objective)",
    NAME_PATTERN: "a valid name (a letter or _ first, then letters, digits, _ . -)",
    QUANTITY_PATTERN: "a Kubernetes quantity such as 512Mi or 4Gi",
}


def load_study_file(path: str | Path) -> StudyManifest:
    """Read and validate a Study file; raises :class:`SpecInvalid` naming every problem."""
    return parse_study_text(_read_text(path), str(path))


def _read_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecInvalid([SpecError("", f"no such file: {path}")], str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecInvalid([SpecError("", f"cannot read the file: {exc}")], str(path)) from None


def parse_study_text(text: str, source: str = "<spec>") -> StudyManifest:
    """Validate a Study given as YAML text."""
    document, lines = _parse_yaml(text, source)
    try:
        return StudyManifest.model_validate(document)
    except ValidationError as exc:
        raise SpecInvalid(errors_from_validation(exc, StudyManifest, lines), source) from None


def load_manifest_file(path: str | Path) -> StudyManifest | GPUBudgetManifest:
    """Read a Study or a GPUBudget file, choosing the model by its ``kind``."""
    source = str(path)
    text = _read_text(path)
    document, lines = _parse_yaml(text, source)
    if document.get("kind") != "GPUBudget":
        return parse_study_text(text, source)
    try:
        return GPUBudgetManifest.model_validate(document)
    except ValidationError as exc:
        raise SpecInvalid(errors_from_validation(exc, GPUBudgetManifest, lines), source) from None


def validate_spec(spec: Any, prefix: Loc = ("spec",)) -> StudySpec:
    """Validate the ``spec`` of a Study object (as the controller receives it).

    Besides the model's rules, one that only a cluster has: population-based training needs
    ``spec.checkpoints`` (a volume every trial pod mounts); local runs keep them on disk.
    """
    try:
        validated = StudySpec.model_validate(spec)
    except ValidationError as exc:
        errors = errors_from_validation(exc, StudySpec, {})
        raise SpecInvalid(
            [
                SpecError(".".join(str(p) for p in prefix) + ("." + e.path if e.path else ""), e.message)
                for e in errors
            ]
        ) from None
    if validated.is_population_based and validated.checkpoints is None:
        where = ".".join(str(p) for p in (*prefix, "checkpoints"))
        message = (
            "population-based training on a cluster keeps checkpoints on a volume: set "
            "checkpoints.persistentVolumeClaim to a PersistentVolumeClaim in the study's namespace"
        )
        raise SpecInvalid([SpecError(where, message)])
    return validated


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecInvalid([SpecError("", f"YAML syntax error: {problem}", line)], source) from None
    if not isinstance(document, dict):
        kind = "empty" if document is None else f"a {type(document).__name__}"
        raise SpecInvalid(
            [SpecError("", f"expected a Study document (a mapping), but the file is {kind}")],
            source,
        )
    lines: dict[Loc, int] = {}
    _index_lines(node, (), lines)
    return document, lines


def _index_lines(node: yaml.Node | None, loc: Loc, lines: dict[Loc, int]) -> None:
    if node is None:
        return
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = key.value
            lines[(*loc, name)] = key.start_mark.line + 1
            _index_lines(value, (*loc, name), lines)
            lines[(*loc, name)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, (*loc, index), lines)


def errors_from_validation(
    exc: ValidationError, root: type[BaseModel], lines: dict[Loc, int]
) -> list[SpecError]:
    """Turn pydantic's errors into one :class:`SpecError` per field, with readable messages."""
    merged: dict[str, SpecError] = {}
    for error in exc.errors():
        raw_loc: Loc = tuple(error["loc"])
        loc = _clean_loc(raw_loc)
        context = error.get("ctx") or {}
        if error["type"] == "tunefleet_spec" and context.get("field"):
            loc = (*loc, *str(context["field"]).split("."))
        path = ".".join(str(p) for p in loc)
        message = _message(error, root, raw_loc)
        line = _line_for(loc, lines)
        if path in merged and error["type"] not in ("tunefleet_spec",):
            previous = merged[path]
            if message not in previous.message:
                merged[path] = SpecError(path, _merge_union(previous.message, message), line)
            continue
        merged[path] = SpecError(path, message, line)
    return list(merged.values())


def _clean_loc(loc: Loc) -> Loc:
    cleaned: list[str | int] = []
    for index, part in enumerate(loc):
        after_param_name = index >= 2 and loc[index - 2] == "searchSpace"
        if after_param_name and part in PARAM_TYPES:
            continue
        if (
            isinstance(part, str)
            and (part in _UNION_MEMBER_TAGS or "[" in part)
            and not after_param_name
            and index > 0
            and loc[index - 1] != "searchSpace"
        ):
            continue
        cleaned.append(part)
    return tuple(cleaned)


def _line_for(loc: Loc, lines: dict[Loc, int]) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _merge_union(first: str, second: str) -> str:
    return f"{first}; or {second}" if len(first) < 200 else first


def _message(error: Any, root: type[BaseModel], raw_loc: Loc) -> str:
    kind = error["type"]
    value = error.get("input")
    context = error.get("ctx") or {}
    if kind == "tunefleet_spec":
        return str(error["msg"])
    if kind == "missing":
        return "is required but missing"
    if kind == "extra_forbidden":
        allowed = _allowed_fields(root, raw_loc[:-1])
        hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
        return f"unknown field{hint}"
    if kind == "union_tag_invalid":
        return f"type {describe(context.get('tag'))} is not one of: {', '.join(PARAM_TYPES)}"
    if kind == "union_tag_not_found":
        return f"needs a type: one of {', '.join(PARAM_TYPES)}"
    if kind == "literal_error":
        expected = str(context.get("expected", "")).replace("'", "")
        return f"must be one of: {expected}; got {describe(value)}"
    if kind == "string_pattern_mismatch":
        pattern = str(context.get("pattern"))
        form = _PATTERN_FORMS.get(pattern, f"the form {pattern}")
        return f"{describe(value)} is not {form}"
    message = str(error["msg"])
    message = message.replace("Input should be", "must be").replace("Value error, ", "")
    if message.startswith("List should have at least"):
        message = message.replace("List should have", "needs")
    # The API server's CEL rule says the same words, and CEL cannot print numbers as Python does.
    shows_value = value is not None and not isinstance(value, (dict, list))
    if kind not in ("value_error", "int_from_float") and shows_value:
        message += f"; got {describe(value)}"
    return message


def _allowed_fields(root: type[BaseModel], loc: Loc) -> list[str]:
    """The field names accepted at ``loc``, found by walking the model's annotations."""
    current: Any = root
    for part in loc:
        current = _step(current, part)
        if current is None:
            return []
    model = _as_model(current, None)
    if model is None:
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


def _step(annotation: Any, part: str | int) -> Any:
    model = _as_model(annotation, part)
    if model is not None and isinstance(part, str) and part in model.model_fields:
        return model.model_fields[part].annotation
    if model is not None and isinstance(part, str) and part in PARAM_TYPES:
        return model
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _step(get_args(annotation)[0], part)
    if origin in (Union, types.UnionType):
        for member in get_args(annotation):
            found = _step(member, part)
            if found is not None:
                return found
        return None
    if origin is dict:
        return get_args(annotation)[1]
    if origin is list and isinstance(part, int):
        return get_args(annotation)[0]
    return None


def _as_model(annotation: Any, tag: str | int | None) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _as_model(get_args(annotation)[0], tag)
    if origin in (Union, types.UnionType):
        members = [m for m in get_args(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]
        for member in members:
            type_field = member.model_fields.get("type")
            if tag is not None and type_field is not None and tag in get_args(type_field.annotation):
                return member
        return members[0] if len(members) == 1 else None
    return None
