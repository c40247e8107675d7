"""The tool-call syntax (inference/tool_calls.py): offering tools, rendering calls and results,
and parsing replies whole and chunk by chunk."""

from __future__ import annotations

import json

import pytest

from base.errors import RequestError
from inference.tool_calls import FORMATS, ToolCall, ToolSpec, collect, format_for, with_tools
from models.registry import families

FMT = FORMATS["hermes"]
WEATHER = ToolSpec("get_weather", "Get the weather", {"type": "object", "properties": {"city": {}}})
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def streamed(text: str, cuts: list[int], tools=None):
    parser = FMT.stream(tools)
    events = []
    bounds = [0, *cuts, len(text)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        events += parser.feed(text[a:b])
    return collect(events + parser.finish())


def test_every_family_names_a_known_format():
    for family in families():
        assert format_for(family.name) is FORMATS[family.tool_call_format]


def test_a_call_is_parsed_with_its_arguments_as_json_text():
    reply = FMT.parse(CALL, {"get_weather"})
    assert reply.content == "" and reply.error is None
    (call,) = reply.tool_calls
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_") and len(call.id) > 10


def test_text_around_calls_and_several_calls():
    text = f"Let me check.\n{CALL}\n{CALL.replace('Paris', 'Oslo')}"
    reply = FMT.parse(text)
    assert reply.content == "Let me check."
    assert [json.loads(c.arguments)["city"] for c in reply.tool_calls] == ["Paris", "Oslo"]
    assert len({c.id for c in reply.tool_calls}) == 2


@pytest.mark.parametrize(
    "text",
    [
        "plain answer, no call",
        f"before {CALL} after",
        f"{CALL}{CALL}",
        "<tool_call>\n{broken json\n</tool_call> and text",
        "a < b and <tool_ c",
        '<tool_call>{"name": "get_weather", "arguments": {}}',  # never closed
    ],
)
def test_streaming_at_every_split_equals_the_whole_parse(text):
    whole = FMT.parse(text)
    for cut in range(len(text) + 1):
        part = streamed(text, [cut])
        assert part.content == whole.content
        assert [(c.name, c.arguments) for c in part.tool_calls] == [
            (c.name, c.arguments) for c in whole.tool_calls
        ]
        assert part.error == whole.error
    byte_by_byte = streamed(text, list(range(1, len(text))))
    assert byte_by_byte.content == whole.content


def test_text_that_may_open_a_call_is_held_back_until_it_cannot():
    parser = FMT.stream()
    assert [e.text for e in parser.feed("Sure <tool")] == ["Sure "]
    assert [e.text for e in parser.feed("box> done")] == ["<toolbox> done"]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("{not json}", "not valid JSON"),
        ('{"arguments": {}}', "with a 'name'"),
        ('{"name": "rm_rf", "arguments": {}}', "not an offered tool"),
        ('{"name": "get_weather", "arguments": [1]}', "not a JSON object"),
        ('{"name": "get_weather", "arguments": "{oops"}', "arguments are not valid JSON"),
    ],
)
def test_a_malformed_call_keeps_its_raw_text(body, why):
    text = f"<tool_call>\n{body}\n</tool_call>"
    reply = FMT.parse(text, {"get_weather"})
    assert reply.tool_calls == ()
    assert reply.content == text
    assert why in reply.error


def test_forms_models_write_besides_the_canonical_one():
    as_list = '<tool_call>[{"name": "get_weather", "arguments": {"city": "Rome"}}]</tool_call>'
    as_string = '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}'
    as_parameters = '<tool_call>{"name": "get_weather", "parameters": {"city": "Rome"}}'
    for text in (as_list, as_string, as_parameters):
        (call,) = FMT.parse(text).tool_calls
        assert json.loads(call.arguments) == {"city": "Rome"}


def test_a_forced_prefix_completes_to_a_call():
    prefix = FMT.forced_prefix("get_weather")
    reply = FMT.parse(prefix + '{"city": "Lima"}}\n', {"get_weather"})
    assert json.loads(reply.tool_calls[0].arguments) == {"city": "Lima"}
    reply = FMT.parse(FMT.forced_prefix(None) + 'get_weather", "arguments": {}}')
    assert reply.tool_calls[0].name == "get_weather"


def test_tools_are_offered_in_the_system_message():
    messages = with_tools([{"role": "user", "content": "hi"}], FMT, [WEATHER])
    assert [m["role"] for m in messages] == ["system", "user"]
    assert json.dumps(WEATHER.schema()) in messages[0]["content"]
    kept = with_tools(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        FMT,
        [WEATHER],
    )
    assert kept[0]["content"].startswith("Be brief.\n\n# Tools")
    assert with_tools([{"role": "user", "content": "hi"}], FMT) == [
        {"role": "user", "content": "hi"}
    ]


def test_calls_and_results_render_as_plain_turns_the_parser_reads_back():
    call = ToolCall("call_a", "get_weather", '{"city": "Paris"}')
    other = ToolCall("call_b", "get_weather", '{"city": "Oslo"}')
    messages = with_tools(
        [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [call, other]},
            {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_b", "content": "cloudy"},
            {"role": "assistant", "content": "Sunny and cloudy."},
        ],
        FMT,
    )
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    back = FMT.parse(messages[1]["content"])
    assert [(c.name, c.arguments) for c in back.tool_calls] == [
        (call.name, call.arguments),
        (other.name, other.arguments),
    ]
    assert messages[2]["content"] == (
        "<tool_response>\nsunny\n</tool_response>\n<tool_response>\ncloudy\n</tool_response>"
    )


def test_bad_tool_names_are_refused():
    for name in ("", "has space", "x" * 65, None):
        with pytest.raises(RequestError):
            ToolSpec(name)
