import json

import pytest

from inference.provider import settings_entry
from inference.transcript import SessionTranscript


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
