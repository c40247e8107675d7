import json

import pytest

from base.errors import ConfigError, Node0Error
from inference.provider import pi_entry, settings_entry
from inference.transcript import SessionTranscript
from node.cli import main


def test_transcript_line_has_the_collector_schema_and_appends(tmp_path):
    path = tmp_path / "rig" / "transcripts" / "node0.jsonl"
    for answer in ("use `bd create`", None):
        t = SessionTranscript(rig="gastown", role="polecat", bead_id="gt-1")
        t.add("user", "file a bead for the flaky test")
        if answer:
            t.add("assistant", answer)
        t.append_to(path)
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first["schema"] == "gastown.transcript/1" and first["role"] == "polecat"
    assert first["outcome"] == "success" and first["turns"][1]["speaker"] == "assistant"
    assert second["outcome"] == "failure" and second["failure_mode"] == "no_answer"
    assert first["session_id"] != second["session_id"]


def test_unknown_role_is_refused():
    with pytest.raises(ValueError, match="role must be one of"):
        SessionTranscript(rig="r", role="janitor")


def test_provider_entry_maps_role_to_a_node0_agent():
    entry = settings_entry("deacon", "smollm2-135m", ["bead-creation", "planning"], [])
    agent = entry["agents"]["node0-deacon"]
    assert agent["command"] == "node0-inference" and agent["provider"] == "node0"
    assert agent["args"] == [
        "--model",
        "smollm2-135m",
        "--role",
        "deacon",
        "--adapters",
        "bead-creation,planning",
    ]
    assert entry["roles"] == {"deacon": "node0-deacon"}


def test_pi_entry_declares_node0_api_as_an_openai_compatible_provider():
    entry = pi_entry("polecat", "smollm2-135m", [], context_window=8192)
    agent = entry["agents"]["node0-polecat"]
    assert agent == {
        "command": "pi",
        "args": ["--provider", "node0", "--model", "smollm2-135m"],
        "provider": "node0",
    }
    assert entry["roles"] == {"polecat": "node0-polecat"}
    provider = entry["pi"]["models.json"]["providers"]["node0"]
    assert provider["baseUrl"] == "http://127.0.0.1:8000/v1"
    assert provider["api"] == "openai-completions"
    assert provider["apiKey"] == "NODE0_API_KEY"  # pi reads that variable, else sends it as is
    assert provider["compat"]["supportsDeveloperRole"] is False
    (model,) = provider["models"]
    assert model["id"] == "smollm2-135m" and model["name"]
    assert model["reasoning"] is False and model["input"] == ["text"]
    # pi asks for maxTokens on every request (16384 without it): it must leave room in the
    # window for pi's own ~1.5k-token prompt, or node0 api answers 400
    assert model["contextWindow"] == 8192
    assert model["maxTokens"] == 256
    compaction = entry["pi"]["settings.json"]["compaction"]
    # pi compacts once the context passes window - reserve and asks for 0.8 * reserve tokens
    assert model["maxTokens"] < compaction["reserveTokens"] <= 8192 // 2
    assert 0 < compaction["keepRecentTokens"] < 8192


def test_pi_entry_takes_the_server_values_and_one_adapter():
    entry = pi_entry(
        "witness",
        "smollm2-135m",
        ["gastown"],
        api_base="http://10.0.0.5:9000/v1/",
        context_window=4096,
        max_tokens=128,
        api_key="TOWN_KEY",
    )
    assert entry["agents"]["node0-witness"]["args"][-2:] == ["--model", "gastown"]
    provider = entry["pi"]["models.json"]["providers"]["node0"]
    assert provider["baseUrl"] == "http://10.0.0.5:9000/v1"
    assert provider["apiKey"] == "TOWN_KEY"
    assert provider["models"][0]["id"] == "gastown"
    assert (provider["models"][0]["contextWindow"], provider["models"][0]["maxTokens"]) == (
        4096,
        128,
    )


@pytest.mark.parametrize(
    "adapters, kwargs, message",
    [
        (["a", "b"], {}, "one adapter per model id"),
        ([], {"max_tokens": 8192}, "--max-tokens"),
        ([], {"max_tokens": 0}, "--max-tokens"),
        ([], {"api_base": "127.0.0.1:8000/v1"}, "--api-base"),
    ],
)
def test_pi_entry_refuses_what_cannot_work(adapters, kwargs, message):
    with pytest.raises(Node0Error, match=message):
        pi_entry("polecat", "smollm2-135m", adapters, **{"context_window": 8192, **kwargs})


def test_provider_settings_cli_default_is_the_node0_inference_agent(capsys):
    assert main(["provider", "settings", "--role", "deacon", "--adapters", "a,b"]) == 0
    assert json.loads(capsys.readouterr().out) == settings_entry(
        "deacon", "smollm2-135m", ["a", "b"], []
    )


def test_provider_settings_cli_writes_pi_config_keeping_the_rest(tmp_path, capsys):
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    other = {"baseUrl": "http://localhost:11434/v1", "api": "openai-completions"}
    (agent_dir / "models.json").write_text(
        json.dumps({"providers": {"ollama": other, "node0": {"stale": True}}})
    )
    (agent_dir / "settings.json").write_text(json.dumps({"theme": "dark"}))
    argv = ["provider", "settings", "--role", "polecat", "--harness", "pi"]
    argv += ["--context-window", "2048", "--max-tokens", "64", "--write-pi-config", str(agent_dir)]
    assert main(argv) == 0
    entry = json.loads(capsys.readouterr().out)
    models = json.loads((agent_dir / "models.json").read_text())
    assert models["providers"]["ollama"] == other
    assert models["providers"]["node0"] == entry["pi"]["models.json"]["providers"]["node0"]
    assert models["providers"]["node0"]["models"][0]["maxTokens"] == 64
    settings = json.loads((agent_dir / "settings.json").read_text())
    assert settings["theme"] == "dark"
    assert settings["compaction"] == entry["pi"]["settings.json"]["compaction"]


def test_provider_settings_cli_reads_the_window_from_the_checkpoint(tiny_model_dir, capsys):
    argv = ["provider", "settings", "--role", "polecat", "--harness", "pi"]
    assert main(argv + ["--model", str(tiny_model_dir)]) == 0
    (model,) = json.loads(capsys.readouterr().out)["pi"]["models.json"]["providers"]["node0"][
        "models"
    ]
    assert model["id"] == tiny_model_dir.name  # the id node0 api lists for a directory
    assert model["contextWindow"] == 256  # the tiny model's max_position_embeddings
    assert model["maxTokens"] == 128  # the default 256 does not fit: half the window


def test_provider_settings_cli_refuses_a_broken_models_json(tmp_path):
    (tmp_path / "models.json").write_text("[1, 2]")
    argv = ["provider", "settings", "--role", "polecat", "--harness", "pi"]
    argv += ["--context-window", "8192", "--write-pi-config", str(tmp_path)]
    assert main(argv) == ConfigError.exit_code
    assert (tmp_path / "models.json").read_text() == "[1, 2]"
