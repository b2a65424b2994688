"""parse_tool_call and the function-calling metrics."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distil_platform.evaluation.scoring import (
    ItemScore,
    ToolSchemaError,
    parse_tool_call,
    score_prediction,
    tool_call_equivalence,
    tool_call_staged,
    tool_call_strict,
)
from distil_platform.tasks.spec import TaskSpec


def _tool(name, properties, required=()):
    return {
        "type": "function",
        "function": {
            "name": name,
            "parameters": {"type": "object", "properties": properties, "required": list(required)},
        },
    }


# Git-Assistant style: many parameters with defaults.
GIT_TOOLS = [
    _tool(
        "git_push",
        {
            "remote": {"type": "string", "default": "origin"},
            "branch": {"type": "string"},
            "force": {"type": "boolean", "default": False},
            "set_upstream": {"type": "boolean", "default": False},
        },
    ),
    _tool(
        "git_log",
        {
            "ref": {"type": "string"},
            "limit": {"type": "integer", "default": 10},
            "oneline": {"type": "boolean", "default": False},
        },
    ),
    _tool("git_add", {"files": {"type": "array", "items": {"type": "string"}}}, ["files"]),
    _tool("git_status", {"verbose": {"type": "boolean", "default": False}}),
    _tool(
        "configure",
        {
            "options": {
                "type": "object",
                "properties": {"depth": {"type": "integer", "default": 1}, "name": {"type": "string"}},
            }
        },
    ),
]

# Smart-Home style: enums, no defaults, multi-turn questions.
HOME_TOOLS = [
    _tool(
        "toggle_lights",
        {
            "room": {"type": "string", "enum": ["bedroom", "bathroom"]},
            "state": {"type": "string", "enum": ["on", "off"]},
        },
    ),
    _tool("set_thermostat", {"temperature": {"type": "integer"}, "mode": {"type": "string"}}),
]


def call(name, **params):
    return json.dumps({"name": name, "parameters": params})


# -- parsing --------------------------------------------------------------------------------------
EXPECTED = {"name": "git_push", "parameters": {"branch": "main", "force": True}}


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "git_push", "parameters": {"branch": "main", "force": true}}',
        '```json\n{"name": "git_push", "parameters": {"branch": "main", "force": true}}\n```',
        'Sure! Here is the call:\n{"name": "git_push", "arguments": {"branch": "main", "force": true}}\nDone.',
        '<tool_call>\n{"name": "git_push", "arguments": {"branch": "main", "force": true}}\n</tool_call>',
        '{"name": "git_push", "arguments": "{\\"branch\\": \\"main\\", \\"force\\": true}"}',
        (
            '{"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", '
            '"function": {"name": "git_push", "arguments": "{\\"branch\\": \\"main\\", \\"force\\": true}"}}]}'
        ),
        '[{"type": "function", "function": {"name": "git_push", "arguments": {"branch": "main", "force": true}}}]',
        '{"type": "function", "function": {"name": "git_push", "parameters": {"branch": "main", "force": true}}}',
        'I think {"thought": 1} then {"name": "git_push", "parameters": {"branch": "main", "force": true}}',
    ],
)
def test_parse_tool_call_shapes(text):
    assert parse_tool_call(text) == EXPECTED


def test_parse_tool_call_accepts_decoded_values_and_no_arguments():
    assert parse_tool_call(EXPECTED) == EXPECTED
    assert parse_tool_call('{"name": "git_status"}') == {"name": "git_status", "parameters": {}}
    assert parse_tool_call('{"name": "git_status", "arguments": ""}') == {
        "name": "git_status",
        "parameters": {},
    }


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "git push origin main",
        '{"name": "git_push", "parameters": {"branch": "main"',  # truncated
        '{"parameters": {"branch": "main"}}',  # no name
        '{"name": "git_push", "parameters": ["main"]}',
        '{"name": "git_push", "arguments": "{not json"}',
        '{"name": 3, "parameters": {}}',
        "[]",
        "{" * 5000,
    ],
)
def test_parse_tool_call_rejects(text):
    assert parse_tool_call(text) is None


# -- equivalence ----------------------------------------------------------------------------------
def test_git_push_defaults_fill_both_sides():
    ref = call("git_push", branch="main")
    assert (
        tool_call_equivalence(call("git_push", branch="main", remote="origin", force=False), ref, GIT_TOOLS)
        == 1.0
    )
    assert tool_call_equivalence(ref, call("git_push", branch="main", remote="origin"), GIT_TOOLS) == 1.0
    assert tool_call_equivalence(call("git_push", branch="main", force=True), ref, GIT_TOOLS) == 0.0
    assert tool_call_equivalence(call("git_push", branch="main", remote="upstream"), ref, GIT_TOOLS) == 0.0
    # strict: an explicit default is a different call
    assert tool_call_strict(call("git_push", branch="main", remote="origin"), ref, GIT_TOOLS) == 0.0
    assert tool_call_strict(ref, ref, GIT_TOOLS) == 1.0


def test_values_compare_by_json_type():
    ref = call("git_log", limit=5)
    assert tool_call_equivalence(call("git_log", limit=5.0), ref, GIT_TOOLS) == 1.0  # 5 == 5.0
    assert tool_call_equivalence(call("git_log", limit="5"), ref, GIT_TOOLS) == 0.0  # "5" != 5
    assert tool_call_equivalence(call("git_log", oneline=1), call("git_log", oneline=True), GIT_TOOLS) == 0.0
    assert tool_call_equivalence(call("git_log", ref="Main"), call("git_log", ref="main"), GIT_TOOLS) == 0.0
    assert tool_call_equivalence(call("git_log", ref=None), call("git_log", ref=None), GIT_TOOLS) == 1.0


def test_lists_in_order_and_nested_objects():
    ref = call("git_add", files=["a.py", "b.py"])
    assert tool_call_equivalence(call("git_add", files=["a.py", "b.py"]), ref, GIT_TOOLS) == 1.0
    assert tool_call_equivalence(call("git_add", files=["b.py", "a.py"]), ref, GIT_TOOLS) == 0.0
    assert tool_call_equivalence(call("git_add", files=["a.py"]), ref, GIT_TOOLS) == 0.0
    nested = call("configure", options={"name": "x"})
    # the nested default (depth=1) fills on both sides
    assert (
        tool_call_equivalence(call("configure", options={"name": "x", "depth": 1}), nested, GIT_TOOLS) == 1.0
    )
    assert (
        tool_call_equivalence(call("configure", options={"name": "x", "depth": 2}), nested, GIT_TOOLS) == 0.0
    )
    assert (
        tool_call_equivalence(call("configure", options={"name": "x", "bogus": 1}), nested, GIT_TOOLS) == 0.0
    )


def test_undefined_parameter_unknown_tool_wrong_name_unparseable_score_zero():
    ref = call("git_push", branch="main")
    assert tool_call_equivalence(call("git_push", branch="main", verbose=True), ref, GIT_TOOLS) == 0.0
    assert tool_call_equivalence(call("git_shove", branch="main"), ref, GIT_TOOLS) == 0.0
    assert tool_call_equivalence(call("git_status"), call("git_status", verbose=False), GIT_TOOLS) == 1.0
    assert tool_call_equivalence(call("git_log"), ref, GIT_TOOLS) == 0.0
    assert tool_call_equivalence("push it", ref, GIT_TOOLS) == 0.0
    assert tool_call_equivalence(None, ref, GIT_TOOLS) == 0.0


def test_bad_reference_or_tools_raise():
    with pytest.raises(ToolSchemaError, match="not a tool call"):
        tool_call_equivalence(call("git_log"), "git log", GIT_TOOLS)
    with pytest.raises(ToolSchemaError, match="unknown tool"):
        tool_call_equivalence(call("git_log"), call("git_blame"), GIT_TOOLS)
    with pytest.raises(ToolSchemaError, match="lacks"):
        tool_call_equivalence(call("git_log"), call("git_log", colour=True), GIT_TOOLS)
    with pytest.raises(ToolSchemaError, match="tools"):
        tool_call_equivalence(call("git_log"), call("git_log"), [{"type": "function"}])
    with pytest.raises(ToolSchemaError):
        tool_call_equivalence(call("git_log"), call("git_log"), [])


def test_staged_levels():
    ref = call("git_push", branch="main", force=True)
    assert tool_call_staged("no json here", ref, GIT_TOOLS) == 0.0
    assert tool_call_staged('{"foo": 1}', ref, GIT_TOOLS) == 0.25  # JSON, not a call
    assert tool_call_staged(call("git_log", limit=1), ref, GIT_TOOLS) == 0.25  # wrong tool
    assert tool_call_staged(call("git_push", force=True), ref, GIT_TOOLS) == 0.5  # keys differ
    # after default filling an omitted `force` is present (False): right keys, wrong value
    assert tool_call_staged(call("git_push", branch="main"), ref, GIT_TOOLS) == 0.75
    assert tool_call_staged(call("git_push", branch="dev", force=True), ref, GIT_TOOLS) == 0.75
    assert (
        tool_call_staged(call("git_push", branch="main", force=True, remote="origin"), ref, GIT_TOOLS) == 1.0
    )


def _home_spec():
    return TaskSpec(name="smart_home", type="tool_calling", description="Control the home.", tools=HOME_TOOLS)


def test_score_prediction_multi_turn_smart_home():
    history = [
        {"role": "user", "content": "Switch off the bedroom lights"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "toggle_lights", "arguments": {"room": "bedroom", "state": "off"}},
                }
            ],
        },
        {"role": "user", "content": "The bathroom too"},
    ]
    row = {
        "question": json.dumps(history),
        "answer": call("toggle_lights", room="bathroom", state="off"),
        "context": "",
    }
    spec = _home_spec()
    good = score_prediction(
        spec,
        '```json\n{"name": "toggle_lights", "arguments": {"state": "off", "room": "bathroom"}}\n```',
        row,
    )
    assert good == ItemScore(1.0, 1.0, True, "")
    stale = score_prediction(spec, call("toggle_lights", room="bedroom", state="off"), row)
    assert (stale.score, stale.strict, stale.parse_ok, stale.detail) == (0.0, 0.0, True, "staged=0.75")
    garbage = score_prediction(spec, "I turned them off.", row)
    assert (garbage.score, garbage.parse_ok) == (0.0, False)


_json_scalars = st.one_of(
    st.booleans(),
    st.integers(-1000, 1000),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.text(max_size=8),
    st.none(),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
_PROPERTY_TOOL = [
    _tool(
        "f",
        {"a": {"default": 1}, "b": {"type": "string", "default": "x"}, "c": {}, "d": {"type": "array"}},
    )
]
_calls = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), _json_values, max_size=4).map(
    lambda params: json.dumps({"name": "f", "parameters": params})
)


@settings(max_examples=80, deadline=None)
@given(_calls)
def test_metrics_reflexive(ref):
    assert tool_call_equivalence(ref, ref, _PROPERTY_TOOL) == 1.0
    assert tool_call_strict(ref, ref, _PROPERTY_TOOL) == 1.0
    assert tool_call_staged(ref, ref, _PROPERTY_TOOL) == 1.0


@settings(max_examples=80, deadline=None)
@given(_calls, _calls)
def test_equivalence_symmetric_and_strict_implies_equivalent(a, b):
    forward = tool_call_equivalence(a, b, _PROPERTY_TOOL)
    assert forward == tool_call_equivalence(b, a, _PROPERTY_TOOL)
    assert tool_call_strict(a, b, _PROPERTY_TOOL) == tool_call_strict(b, a, _PROPERTY_TOOL)
    if tool_call_strict(a, b, _PROPERTY_TOOL) == 1.0:
        assert forward == 1.0
    assert (tool_call_staged(a, b, _PROPERTY_TOOL) == 1.0) == (forward == 1.0)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_parse_never_raises(text):
    result = parse_tool_call(text)
    assert result is None or (isinstance(result["name"], str) and isinstance(result["parameters"], dict))
