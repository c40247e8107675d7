import json

from provenance import create_run_dir, sha256_file


def test_run_dirs_are_never_reused_and_record_artifacts(tmp_path):
    a = create_run_dir(tmp_path, "demo", config={"x": 1}, seeds={"data": 3})
    b = create_run_dir(tmp_path, "demo", config={"x": 1})
    assert a.path != b.path
    (a.path / "out.txt").write_text("hello")
    a.add_artifact("out.txt")
    a.finish()
    record = json.loads((a.path / "run_record.json").read_text())
    assert record["status"] == "done" and record["seeds"] == {"data": 3}
    assert record["artifacts"] == [
        {"path": "out.txt", "size": 5, "sha256": sha256_file(a.path / "out.txt")}
    ]
    assert record["config"]["sha256"] == sha256_file(a.path / "config_resolved.yaml")
    assert {"python", "torch", "transformers", "hivemind"} <= set(record["versions"])


def test_relative_run_root_accepts_artifacts_by_absolute_or_run_relative_path(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    run = create_run_dir("runs", "demo")
    assert run.path.is_absolute()
    (run.path / "a.txt").write_text("a")
    run.add_artifact(run.path / "a.txt")
    run.add_artifact("a.txt")
    record = json.loads((run.path / "run_record.json").read_text())
    assert [a["path"] for a in record["artifacts"]] == ["a.txt"]
