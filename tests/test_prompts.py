"""Prompt rendering: the compact tool-schema rendering is complete, shorter, and the one every model gets."""

from __future__ import annotations

import json
import re

import pytest

from distil_platform.tasks.prompts import (
    build_messages,
    build_training_messages,
    render_tool_signature,
    render_tools,
    rendering_label,
    system_prompt,
)
from distil_platform.tasks.spec import TaskSpec, get_task

TOOL_TASKS = ("smart_home", "git_assistant")

# JSON-schema keywords a tool parameter may use (anything else in a shipped YAML is a typo, or a
# YAML flow mapping split at an unquoted comma: `{description: a, b}` -> key "b": null).
JSON_SCHEMA_KEYWORDS = {
    "type", "enum", "const", "default", "description", "title", "items", "properties", "required",
    "additionalProperties", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
    "minItems", "maxItems", "uniqueItems", "pattern", "format", "multipleOf", "anyOf", "oneOf", "examples",
}


def _param_lines(block: str) -> dict[str, str]:
    """Parameter name -> its line in one function block of the signature rendering."""
    out = {}
    for line in block.splitlines()[1:]:
        match = re.match(r"^  ([A-Za-z_][A-Za-z0-9_]*)(\??): ", line)
        if match:
            out[match.group(1)] = line
    return out


def _assert_complete(function: dict) -> None:
    block = render_tool_signature(function)
    header = block.splitlines()[0]
    assert header.startswith(function["name"])
    if function.get("description"):
        assert function["description"].strip() in header
    params = function.get("parameters") or {}
    props = params.get("properties") or {}
    required = set(params.get("required") or [])
    lines = _param_lines(block)
    assert set(lines) == set(props), (function["name"], set(lines) ^ set(props))
    for name, schema in props.items():
        line = lines[name]
        # required flag: `name:` when required, `name?:` when optional
        assert line.startswith(f"  {name}{'' if name in required else '?'}: "), line
        for value in schema.get("enum", []):
            assert json.dumps(value) in line, (name, value, line)
        if "default" in schema:
            assert f"= {json.dumps(schema['default'])}" in line, (name, line)
        if schema.get("description"):
            assert schema["description"].strip() in line, (name, line)
        for key in ("minimum", "maximum", "minItems", "maxItems", "minLength", "maxLength", "pattern"):
            if key in schema:
                assert f"{key}={json.dumps(schema[key])}" in line, (name, key, line)
        kind = schema.get("type")
        if "enum" not in schema and isinstance(kind, str):
            expected = {"string": "str", "integer": "int", "number": "float", "boolean": "bool",
                        "array": "list["}.get(kind, kind)
            assert f": {expected}" in line, (name, kind, line)


@pytest.mark.parametrize("task", TOOL_TASKS)
def test_signature_rendering_is_complete_for_the_shipped_tools(task):
    spec = get_task(task)
    for tool in spec.tools:
        _assert_complete(tool["function"])
    text = render_tools(spec, "signature")
    assert all(name in text for name in spec.tool_names)
    assert "no other parameters exist" in text  # every shipped tool sets additionalProperties: false


@pytest.mark.parametrize("task", TOOL_TASKS)
def test_shipped_tool_schemas_use_only_json_schema_keywords(task):
    for tool in get_task(task).tools:
        for name, schema in tool["function"]["parameters"].get("properties", {}).items():
            bad = {k: v for k, v in schema.items() if k not in JSON_SCHEMA_KEYWORDS or v is None}
            assert not bad, f"{task}.{tool['function']['name']}.{name}: {bad} (quote descriptions with commas)"


def test_every_schema_keyword_appears_even_unusual_ones():
    function = {
        "name": "book",
        "description": "Book a table.",
        "parameters": {
            "type": "object",
            "properties": {
                "when": {"type": "string", "format": "date-time", "pattern": "^2026-", "description": "Start."},
                "party": {"type": ["integer", "null"], "exclusiveMinimum": 0, "maximum": 12, "default": 2},
                "seating": {"anyOf": [{"const": "inside"}, {"const": "outside"}]},
                "guests": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "vip": {"type": "boolean", "default": False}}, "required": ["name"]},
                    "uniqueItems": True, "maxItems": 4},
                "note": {"type": "string", "x-internal": "yes"},
                "code": {"description": "Any value."},
            },
            "required": ["when", "guests"],
        },
    }
    block = render_tool_signature(function)
    lines = _param_lines(block)
    assert lines["when"].startswith("  when: str — Start. [") and 'format="date-time"' in lines["when"]
    assert 'pattern="^2026-"' in lines["when"]
    assert lines["party"].startswith("  party?: int | None = 2") and "exclusiveMinimum=0" in lines["party"]
    assert lines["seating"].startswith('  seating?: "inside" | "outside"')
    assert lines["guests"].startswith("  guests: list[{name: str, vip?: bool = false}]")
    assert "uniqueItems=true" in lines["guests"] and "maxItems=4" in lines["guests"]
    assert 'x-internal="yes"' in lines["note"]  # unknown keywords are kept, not dropped
    assert lines["code"].startswith("  code?: any — Any value.")
    # additionalProperties not false: the model is told other parameters are allowed
    assert block.splitlines()[-1] == "  [other parameters allowed]"
    assert render_tool_signature({"name": "ping", "parameters": {"type": "object", "properties": {},
                                                                   "additionalProperties": False}}) \
        == "ping\n  (no parameters)"


@pytest.mark.parametrize("task", TOOL_TASKS)
def test_signature_is_shorter_and_json_schema_is_the_raw_schema(task):
    spec = get_task(task)
    raw = render_tools(spec, "json_schema")
    assert json.loads(raw.split("\n", 1)[1]) == [t["function"] for t in spec.tools]
    assert len(render_tools(spec, "signature")) < 0.8 * len(raw)
    with pytest.raises(ValueError, match="unknown tool rendering"):
        render_tools(spec, "xml")


def test_one_rendering_for_training_eval_and_every_model():
    spec = get_task("smart_home")
    assert spec.tool_rendering == "signature"
    row = {"id": "r1", "question": json.dumps([{"role": "user", "content": "lights on in the kitchen"}]),
           "answer": '{"name": "toggle_lights", "parameters": {"room": "kitchen", "state": "on"}}', "context": ""}
    messages = build_messages(spec, row)
    assert messages[0] == {"role": "system", "content": system_prompt(spec)}
    assert render_tools(spec) in messages[0]["content"] and "JSON schema" not in messages[0]["content"]
    assert build_training_messages(spec, row)[:-1] == messages
    # The task YAML chooses the rendering, for every model at once.
    legacy = TaskSpec(**{**spec.model_dump(), "tool_rendering": "json_schema"})
    assert "Available functions (JSON schema)" in build_messages(legacy, row)[0]["content"]
    assert build_messages(spec, row, tool_rendering="json_schema") == build_messages(legacy, row)
    assert rendering_label(spec) == "tools as signature" and rendering_label(legacy) == "tools as json_schema"
    assert rendering_label(get_task("banking77")) == "labels as a list"
