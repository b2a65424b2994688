"""Tool-call parsing and the function-calling metrics (equivalence, strict, staged).

A tool call is ``{"name": str, "parameters": dict}``. Tools are the OpenAI list
``[{"type": "function", "function": {"name": ..., "parameters": <JSON schema>}}]``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

from distil_platform.evaluation.scoring.text import as_text, fenced_blocks

# Scanning long garbage for embedded JSON is quadratic in the worst case: bound the work.
_MAX_SCAN_CHARS = 20_000
_MAX_SCAN_STARTS = 200
_JSON_START_RE = re.compile(r"[\{\[]")
_DECODER = json.JSONDecoder()


class ToolSchemaError(ValueError):
    """The tool list or a reference call is malformed (not the model's fault)."""


# -- parsing ------------------------------------------------------------------------------------
def _as_call(value: Any) -> dict[str, Any] | None:
    """Normalise one decoded JSON value of any accepted shape into ``{"name", "parameters"}``."""
    if isinstance(value, list):
        # A list of calls (OpenAI ``tool_calls``): the benchmark expects one call, take the first.
        return _as_call(value[0]) if value else None
    if not isinstance(value, dict):
        return None
    if "tool_calls" in value:  # an assistant message
        return _as_call(value["tool_calls"])
    for wrapper in ("function", "function_call"):  # {"type": "function", "function": {...}}
        if isinstance(value.get(wrapper), dict):
            return _as_call(value[wrapper])
    name = value.get("name")
    if not isinstance(name, str) or not name:
        return None
    if "parameters" in value:
        args = value["parameters"]
    elif "arguments" in value:
        args = value["arguments"]
    else:
        args = {}
    if isinstance(args, str):  # OpenAI gives arguments as a JSON string
        if not args.strip():
            args = {}
        else:
            try:
                args = json.loads(args)
            except (json.JSONDecodeError, RecursionError):
                return None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None
    return {"name": name, "parameters": args}


def _json_values(text: str) -> Iterator[Any]:
    """Every JSON value found in ``text``: the whole text, fenced blocks, then embedded objects."""
    candidates = [text] + [body.strip() for _, body in fenced_blocks(text)]
    for candidate in candidates:
        try:
            yield json.loads(candidate)
        except (json.JSONDecodeError, RecursionError):
            pass
    scan = text[:_MAX_SCAN_CHARS]
    position, starts = 0, 0
    while starts < _MAX_SCAN_STARTS:
        match = _JSON_START_RE.search(scan, position)
        if not match:
            return
        starts += 1
        try:
            value, end = _DECODER.raw_decode(scan, match.start())
        except (json.JSONDecodeError, RecursionError):
            position = match.start() + 1
            continue
        yield value
        position = end


def parse_tool_call(text: Any) -> dict[str, Any] | None:
    """The first tool call in a model's output, as ``{"name": str, "parameters": dict}``, or None.

    Accepted: a bare JSON object; a fenced code block; text around a JSON object (e.g. Hermes
    ``<tool_call>{...}</tool_call>``); the OpenAI shapes ``{"tool_calls": [...]}``,
    ``[{"type": "function", "function": {...}}]`` and ``{"function": {...}}``; ``arguments``
    given as a JSON string; either ``parameters`` or ``arguments`` as the key (a call with
    neither has no parameters). Already-decoded dicts/lists are accepted too. Never raises.
    """
    if isinstance(text, (dict, list)):
        return _as_call(text)
    text = as_text(text).strip()
    if not text:
        return None
    for value in _json_values(text):
        call = _as_call(value)
        if call is not None:
            return call
    return None


def _has_json(text: Any) -> bool:
    if isinstance(text, (dict, list)):
        return True
    text = as_text(text).strip()
    return any(isinstance(v, (dict, list)) for v in _json_values(text)) if text else False


# -- schema helpers -----------------------------------------------------------------------------
def tool_index(tools: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """``{tool name: parameters JSON schema}``; raises :class:`ToolSchemaError` on a malformed list."""
    if not isinstance(tools, list) or not tools:
        raise ToolSchemaError("tools must be a non-empty list of OpenAI function schemas")
    index: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ToolSchemaError(f"tools[{i}] must be {{type: function, function: {{name, parameters}}}}")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict) or not isinstance(params.get("properties", {}), dict):
            raise ToolSchemaError(f"tools[{i}] ({fn['name']}): parameters must be a JSON-schema object")
        index[fn["name"]] = params
    return index


def _properties(schema: dict[str, Any]) -> dict[str, Any]:
    props = schema.get("properties") or {}
    return props if isinstance(props, dict) else {}


def _undefined_parameter(params: dict[str, Any], schema: dict[str, Any], path: str = "") -> str | None:
    """The first parameter (dotted path) that ``schema`` does not define, or None."""
    props = _properties(schema)
    for key, value in params.items():
        if key not in props:
            return f"{path}{key}"
        sub = props[key]
        nested_closed = (
            isinstance(sub, dict) and "properties" in sub and sub.get("additionalProperties") is not True
        )
        if isinstance(value, dict) and nested_closed:
            found = _undefined_parameter(value, sub, f"{path}{key}.")
            if found:
                return found
    return None


def fill_defaults(params: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``params`` plus every omitted parameter the schema gives a ``default`` (nested objects too)."""
    out = dict(params)
    for key, sub in _properties(schema).items():
        if not isinstance(sub, dict):
            continue
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        elif isinstance(out.get(key), dict) and "properties" in sub:
            out[key] = fill_defaults(out[key], sub)
    return out


def values_equal(a: Any, b: Any) -> bool:
    """JSON value equality: numbers by value (1 == 1.0), booleans only equal booleans, "1" != 1,
    strings exactly, lists in order, objects recursively by key."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    return a is None and b is None


def _reference_call(reference: Any, index: dict[str, dict[str, Any]]) -> dict[str, Any]:
    call = parse_tool_call(reference)
    if call is None:
        raise ToolSchemaError(f"reference is not a tool call: {as_text(reference)[:200]!r}")
    if call["name"] not in index:
        raise ToolSchemaError(f"reference calls unknown tool {call['name']!r}; tools: {', '.join(index)}")
    undefined = _undefined_parameter(call["parameters"], index[call["name"]])
    if undefined:
        raise ToolSchemaError(
            f"reference call {call['name']} passes parameter {undefined!r} the schema lacks"
        )
    return call


def _compare(prediction: Any, reference: Any, tools: list[dict[str, Any]], *, fill: bool) -> float:
    index = tool_index(tools)
    ref = _reference_call(reference, index)
    pred = parse_tool_call(prediction)
    if pred is None or pred["name"] != ref["name"]:
        return 0.0
    schema = index[ref["name"]]
    if _undefined_parameter(pred["parameters"], schema):
        return 0.0
    pred_params, ref_params = pred["parameters"], ref["parameters"]
    if fill:
        pred_params, ref_params = fill_defaults(pred_params, schema), fill_defaults(ref_params, schema)
    return float(values_equal(pred_params, ref_params))


# -- metrics ------------------------------------------------------------------------------------
def tool_call_equivalence(prediction: Any, reference: Any, tools: list[dict[str, Any]]) -> float:
    """The benchmark's function-calling metric: 1.0 when the calls are the same after filling, on
    both sides, every parameter the tool schema gives a ``default`` and that the call omits.

    Names must match exactly; values compare by :func:`values_equal`; a parameter the schema does
    not define, an unparseable output or an unknown tool scores 0.0. Raises
    :class:`ToolSchemaError` only for a malformed ``tools`` list or reference.
    """
    return _compare(prediction, reference, tools, fill=True)


def tool_call_strict(prediction: Any, reference: Any, tools: list[dict[str, Any]]) -> float:
    """As :func:`tool_call_equivalence` but without default filling: an explicitly passed default
    differs from an omitted one."""
    return _compare(prediction, reference, tools, fill=False)


def tool_call_staged(prediction: Any, reference: Any, tools: list[dict[str, Any]]) -> float:
    """Diagnostic partial credit: 0.25 the output holds valid JSON, 0.5 a call with the right tool
    name, 0.75 the right parameter keys (after default filling), 1.0 the right values too."""
    index = tool_index(tools)
    ref = _reference_call(reference, index)
    pred = parse_tool_call(prediction)
    if pred is None:
        return 0.25 if _has_json(prediction) else 0.0
    if pred["name"] != ref["name"]:
        return 0.25
    schema = index[ref["name"]]
    pred_params = fill_defaults(pred["parameters"], schema)
    ref_params = fill_defaults(ref["parameters"], schema)
    if pred_params.keys() != ref_params.keys():
        return 0.5
    return 1.0 if values_equal(pred_params, ref_params) else 0.75
