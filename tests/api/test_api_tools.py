"""Tool calls through ``node0 api`` over a real 3-stage SmolLM2 swarm, with the ``openai``
client: a task adapter trained for the session (``tool_adapters``, single-process PEFT) to call
``get_weather`` is served by the shared swarm; its calls come back as OpenAI ``tool_calls``
(whole and streamed), the tool's result goes back as a ``tool`` message, and every answer
equals single-process PEFT's greedy answer to the same rendered prompt.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import torch

from dataload.prompt_format import encode_prompt, render
from inference.tool_calls import FORMATS, ToolCall, ToolSpec, with_tools
from tests.fixtures import WEATHER_TOOL, api_server, weather_exchange

# the session's shared swarm (smollm2_swarm: tool adapters trained first) may start in this
# module's setup: minutes on busy cores
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

MODEL = "smollm2-135m"
ADAPTER = "weather"
TOKENS = 40
FMT = FORMATS["hermes"]
TOOLS = [ToolSpec(**WEATHER_TOOL["function"])]


@pytest.fixture(scope="module")
def trained(tool_adapters):
    return tool_adapters[ADAPTER]


@pytest.fixture(scope="module")
def server(smollm2_swarm, tmp_path_factory):
    log = tmp_path_factory.mktemp("tool-api") / "api.log"
    with api_server(smollm2_swarm.initial_peers, log=log) as base:
        yield base


@pytest.fixture(scope="module")
def oai(server):
    with openai.OpenAI(base_url=f"{server}/v1", api_key="-", max_retries=0, timeout=180) as c:
        yield c


@pytest.fixture(scope="module")
def reference(trained, smollm2_dir):
    """Single-process PEFT's greedy answer (text up to EOS) to messages rendered with tools."""
    from transformers import AutoTokenizer

    _, model = trained
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)

    def answer(messages, *, adapter: bool = True, tools=TOOLS, prefix: str = "") -> str:
        text = render(with_tools(messages, FMT, tools), mode="chat", tokenizer=tokenizer)
        ids = encode_prompt(text + prefix, tokenizer, mode="chat")
        with torch.no_grad():
            if adapter:
                out = model.generate(torch.tensor([ids]), max_new_tokens=TOKENS, do_sample=False)
            else:
                with model.disable_adapter():
                    out = model.generate(
                        torch.tensor([ids]), max_new_tokens=TOKENS, do_sample=False
                    )
        new = out[0, len(ids) :].tolist()
        if tokenizer.eos_token_id in new:
            new = new[: new.index(tokenizer.eos_token_id)]
        return tokenizer.decode(new, skip_special_tokens=True)

    return answer


def ask(oai, messages, **kw):
    return oai.chat.completions.create(
        model=kw.pop("model", ADAPTER), messages=messages, temperature=0, max_tokens=TOKENS, **kw
    )


def test_tool_call_round_trip_equals_single_process(oai, reference):
    question, _, _ = weather_exchange("Paris", 0, "")
    first = ask(oai, question, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    expected = FMT.parse(reference(question), {"get_weather"})
    assert [(c.name, c.arguments) for c in expected.tool_calls] == [
        (call.function.name, call.function.arguments)
    ]
    assert (choice.message.content or "") == expected.content

    # the tool's result goes back; the answer is text again
    result = json.dumps({"temperature": 25, "sky": "windy"})
    follow = question + [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    final = ask(oai, follow, tools=[WEATHER_TOOL])
    history = question + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [ToolCall(call.id, call.function.name, call.function.arguments)],
        },
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].message.content == reference(history)
    assert final.choices[0].message.content  # the adapter answers from the result


def test_streamed_tool_call_equals_the_whole_answer(oai):
    question, _, _ = weather_exchange("Tokyo", 0, "")
    whole = ask(oai, question, tools=[WEATHER_TOOL]).choices[0].message.tool_calls
    stream = ask(
        oai, question, tools=[WEATHER_TOOL], stream=True, stream_options={"include_usage": True}
    )
    calls: dict[int, dict] = {}
    finish, usage = None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                entry["name"] += delta.function.name or ""
                entry["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls"
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [
        (c.function.name, c.function.arguments) for c in whole
    ]
    assert usage is not None and usage.completion_tokens > 0


def test_named_tool_choice_forces_a_call(oai, reference):
    question = [{"role": "user", "content": "Tell me about Oslo."}]
    choice = {"type": "function", "function": {"name": "get_weather"}}
    answer = ask(oai, question, tools=[WEATHER_TOOL], tool_choice=choice).choices[0]
    prefix = FMT.forced_prefix("get_weather")
    raw = prefix + reference(question, prefix=prefix)
    expected = FMT.parse(raw.split(FMT.close_tag)[0], {"get_weather"})
    if expected.tool_calls:
        assert answer.finish_reason == "tool_calls"
        assert answer.message.tool_calls[0].function.name == "get_weather"
        assert answer.message.tool_calls[0].function.arguments == (expected.tool_calls[0].arguments)
    else:
        assert answer.message.content == expected.content


def test_unparseable_call_keeps_the_raw_text(oai, reference):
    """The base model, forced to call, writes arguments that are not JSON: the answer is the
    raw text with its finish reason, never an error."""
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    choice = {"type": "function", "function": {"name": "get_weather"}}
    answer = ask(oai, question, model=MODEL, tools=[WEATHER_TOOL], tool_choice=choice)
    prefix = FMT.forced_prefix("get_weather")
    # the server stops at the call's closing tag, which is not returned
    expected = (prefix + reference(question, adapter=False, prefix=prefix)).split(FMT.close_tag)[0]
    assert FMT.parse(expected, {"get_weather"}).tool_calls == ()  # what makes this case
    got = answer.choices[0]
    assert got.message.tool_calls is None
    assert got.finish_reason in ("stop", "length")
    assert got.message.content == expected


def test_tool_choice_none_offers_no_tools(oai, reference):
    question, _, _ = weather_exchange("Paris", 0, "")
    answer = ask(oai, question, tools=[WEATHER_TOOL], tool_choice="none").choices[0]
    assert answer.message.tool_calls is None
    assert answer.message.content == reference(question, tools=())


@pytest.mark.parametrize(
    ("change", "param", "code"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", None),
        ({"tool_choice": "required", "tools": None}, "tool_choice", None),
        ({"tool_choice": "sometimes"}, "tool_choice", None),
        ({"tools": [{"type": "retrieval"}]}, "tools[0]", "unsupported_value"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, None, None),
        ({"tools": [WEATHER_TOOL, WEATHER_TOOL]}, "tools[1].function.name", None),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}]},
            "messages[1].tool_call_id",
            None,
        ),
        (
            {"messages": [{"role": "user", "content": "hi", "tool_calls": [{"id": "c"}]}]},
            "messages[0].tool_calls",
            None,
        ),
    ],
)
def test_bad_tool_requests_are_400(server, change, param, code):
    body = {"model": ADAPTER, "messages": [{"role": "user", "content": "hi"}]}
    body |= {"tools": [WEATHER_TOOL], "max_tokens": 4, **change}
    body = {k: v for k, v in body.items() if v is not None}
    reply = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
