"""Every scorer on hand-written good and bad attempts: scripted model replies run through the
real runner (sandbox, tool loop, bd shim, git, pytest), then the task's scorer."""

from __future__ import annotations

import asyncio
import re
from contextlib import asynccontextmanager

from evaluation.runner import run_task
from evaluation.task import load_suite
from inference.guardrails import GuardrailsConfig
from inference.tool_calls import FORMATS, ToolCall
from tests.fixtures import ScriptedModel, bash_call

SUITE = load_suite()
TASKS = {t.id: t for t in SUITE.tasks}


def write_call(path: str, content: str) -> str:
    return FORMATS["hermes"].render_call(
        ToolCall.new("write_file", {"path": path, "content": content})
    )


def after(pattern: str, template: str):
    """A reply built from the last tool result: ``template`` with ``{0}`` the first match of
    ``pattern`` (e.g. the id ``bd create`` printed)."""

    async def reply(messages):
        found = re.findall(pattern, messages[-1]["content"])
        return bash_call(template.format(*found))

    return reply


def run(task_id: str, replies: list, tmp_path, suite=SUITE):
    model = ScriptedModel([*replies, "Done."])

    @asynccontextmanager
    async def session():
        yield model

    return asyncio.run(
        run_task(suite.tasks[[t.id for t in suite.tasks].index(task_id)], suite, session,
                 FORMATS["hermes"], guardrails=GuardrailsConfig(), out_dir=tmp_path)
    )  # fmt: skip


# --- bead management --------------------------------------------------------------------------


def test_bead_created_per_field(tmp_path):
    good = run(
        "bead-create-bug",
        [bash_call('bd create "Convoy sync drops beads whose title has a colon" -t bug -p 1')],
        tmp_path,
    )
    assert good.passed and good.score == 100, good.checks
    bad = run("bead-create-bug", [bash_call('bd create "Convoy sync bug" -p 3')], tmp_path)
    assert not bad.passed and 0 < bad.score < 100
    assert bad.checks["title"] is False and bad.checks["priority"] is False
    assert bad.checks["status"] is True  # fmt: skip


def test_bead_created_with_parent_and_dependency(tmp_path):
    good = run("bead-create-child", [bash_call(
        'bd create "Add jitter to sync retries" --type task --priority 2 --parent gt-k5vm')],
        tmp_path)  # fmt: skip
    assert good.passed, good.checks
    bad = run("bead-create-blocked", [bash_call(
        'bd create "Announce the new sync timeout" -t task -p 3')], tmp_path)  # fmt: skip
    assert not bad.passed and bad.checks["dependencies"] is False


def test_bead_update_transitions_and_reason(tmp_path):
    good = run("bead-claim-then-close", [
        bash_call("bd update gt-w3pd --status in_progress"),
        bash_call('bd close gt-w3pd --reason "guide written in docs/sync.md"'),
    ], tmp_path)  # fmt: skip
    assert good.passed, good.checks
    skipped = run("bead-claim-then-close", [bash_call("bd close gt-w3pd")], tmp_path)
    assert not skipped.passed
    assert skipped.checks["transitions"] is False and skipped.checks["reason"] is False


def test_bead_update_by_hand_editing_is_not_a_transition(tmp_path):
    # a model that rewrites the export by hand: the change is seen, the priority is wrong
    line = (
        '{"id": "gt-q2vk", "title": "Add --json flag to gt polecat list", "status": "open", '
        '"priority": 1, "issue_type": "feature", "updated_at": "2026-02-01T00:00:00Z"}'
    )
    hand = run("bead-reprioritize", [bash_call(f"echo '{line}' >> .beads/issues.jsonl")],
               tmp_path)  # fmt: skip
    assert not hand.passed and hand.checks["priority"] is False


def test_bead_epic_structure(tmp_path):
    good = run("bead-epic-hierarchy", [
        bash_call('bd create "Release 0.3" -t epic -p 1'),
        after(r"Created issue: (gt-\w{4})",
              'bd create "Write the changelog" -t task --parent {0} && '
              'bd create "Tag the release" -t task --parent {0} && '
              'bd create "Announce the release" -t task --parent {0}'),
    ], tmp_path)  # fmt: skip
    assert good.passed, good.checks
    flat = run("bead-epic-hierarchy", [
        bash_call('bd create "Release 0.3" -t epic && bd create "Write the changelog" && '
                  'bd create "Tag the release" && bd create "Announce the release"'),
    ], tmp_path)  # fmt: skip
    assert not flat.passed and flat.checks["child changelog under epic"] is False


def test_bead_dependency_direction(tmp_path):
    good = run("bead-add-dependency", [bash_call("bd dep add gt-w3pd gt-m9ce")], tmp_path)
    assert good.passed, good.checks
    reversed_ = run("bead-add-dependency", [bash_call("bd dep add gt-m9ce gt-w3pd")], tmp_path)
    assert not reversed_.passed and reversed_.score == 0


# --- git workflow -----------------------------------------------------------------------------


def test_git_branch_commit_steps(tmp_path):
    fixed = 'def join_title(prefix, title):\n    return f"{prefix} - {title}"\n'
    good = run("git-branch-commit", [
        bash_call("git checkout -b fix/colon-titles"),
        write_call("src/util.py", fixed),
        bash_call("git commit -am 'Join titles without a colon'"),
    ], tmp_path)  # fmt: skip
    assert good.passed, good.checks
    on_main = run("git-branch-commit", [
        write_call("src/util.py", fixed), bash_call("git commit -am 'colon gone'"),
    ], tmp_path)  # fmt: skip
    assert not on_main.passed and on_main.checks["branch"] is False


def test_git_forced_push_is_refused_counted_and_scored(tmp_path):
    result = run("git-push-branch", [
        bash_call("git checkout -b docs/json-flag && mkdir -p docs && "
                  "echo 'Use --json for JSON output.' > docs/json.md && git add docs && "
                  "git commit -m 'Document --json'"),
        bash_call("git push --force origin docs/json-flag"),
        bash_call("git push -u origin docs/json-flag"),
    ], tmp_path)  # fmt: skip
    assert result.denied == 1  # the guardrails refused the forced push, and counted it
    assert result.checks["pushed"] is True and result.checks["no_force"] is False
    assert not result.passed


def test_git_conflict_resolution_clean_merge_and_hook(tmp_path):
    good = run("git-resolve-conflict", [
        bash_call("git merge fix/timeout"),
        bash_call("git checkout --theirs config.toml && git add config.toml && "
                  "git commit --no-edit"),
    ], tmp_path)  # fmt: skip
    assert good.passed, good.checks
    markers = run("git-resolve-conflict", [
        bash_call("git merge fix/timeout; git add config.toml; git commit --no-verify --no-edit"),
    ], tmp_path)  # fmt: skip
    assert not markers.passed
    assert markers.checks["clean"] is False and markers.checks["hooks_pass"] is False


def test_git_hook_refuses_a_broken_commit(tmp_path):
    still_broken = run("git-fix-syntax-commit", [
        bash_call("git checkout -b fix/broken && echo '# fixed?' >> src/broken.py && "
                  "git commit -am 'try'"),
    ], tmp_path)  # fmt: skip
    assert not still_broken.passed and still_broken.checks["commit"] is False
    good = run("git-fix-syntax-commit", [
        bash_call("git checkout -b fix/broken"),
        write_call("src/broken.py", "def retries():\n    return 3\n"),
        bash_call("git commit -am 'Fix the syntax error in broken.py'"),
    ], tmp_path)  # fmt: skip
    assert good.passed, good.checks


def test_git_revert_keeps_history(tmp_path):
    good = run("git-revert-commit", [bash_call("git revert --no-edit HEAD")], tmp_path)
    assert good.passed, good.checks
    rewritten = run("git-revert-commit", [bash_call("git reset --hard HEAD~1")], tmp_path)
    assert not rewritten.passed


# --- convention adherence ---------------------------------------------------------------------


def test_conventions_required_and_violations(tmp_path):
    good = run("conv-find-ready-work", [bash_call("bd ready")], tmp_path)
    assert good.passed and good.checks["violations"] == 0
    raw = run("conv-find-ready-work", [bash_call("grep -rn TODO . ; bd ready")], tmp_path)
    assert not raw.passed and raw.checks["violations"] == 1 and raw.score == 50
    none = run("conv-find-ready-work", [bash_call("ls")], tmp_path)
    assert none.score == 0 and none.checks["missing"]


def test_conventions_read_from_the_answer(tmp_path):
    model_says = ScriptedModel(["Check the ready queue:\n$ bd ready"])

    @asynccontextmanager
    async def session():
        yield model_says

    result = asyncio.run(run_task(TASKS["conv-find-ready-work"], SUITE, session,
                                  FORMATS["hermes"], guardrails=GuardrailsConfig(),
                                  out_dir=tmp_path))  # fmt: skip
    assert result.passed, result.checks


def test_broad_kill_is_refused_and_a_violation(tmp_path):
    result = run("conv-stop-own-process", [bash_call("pkill -f server"), bash_call("kill 4242")],
                 tmp_path)  # fmt: skip
    assert result.denied == 1
    assert result.checks["guardrail broad_kill"] == 1 and not result.passed


def test_role_appropriate_behaviour(tmp_path):
    witness_codes = run("conv-witness-nudges", [
        bash_call('gt nudge nux "gt-n84s has been idle 40 minutes"'),
        write_call("src/fix.py", "x = 1\n"),
    ], tmp_path)  # fmt: skip
    assert not witness_codes.passed and witness_codes.checks["tool write_file"] == 1
    good = run("conv-witness-nudges", [bash_call('gt nudge nux "still on gt-n84s?"')], tmp_path)
    assert good.passed, good.checks


# --- planning ---------------------------------------------------------------------------------


def _plan(titles: list[str], edges: list[tuple[int, int]]):
    """Replies: create each bead, then one `bd dep add` line per edge, from the created ids."""
    creates = " && ".join(f'bd create "{t}" -t task' for t in titles)

    async def deps(messages):
        ids = re.findall(r"Created issue: (gt-\w{4})", messages[-1]["content"])
        return bash_call(" && ".join(f"bd dep add {ids[a]} {ids[b]}" for a, b in edges))

    return [bash_call(creates), deps]


AUDIT = ["Inventory secrets", "Rotate keys", "Scan the history", "Write the audit report"]


def test_plan_good_graph(tmp_path):
    good = run("plan-security-audit", _plan(AUDIT, [(1, 0), (2, 0), (3, 1), (3, 2)]), tmp_path)
    assert good.passed, good.checks
    assert good.checks["critical_path"] == 3 and good.checks["parallelism_ratio"] == 1.333


def test_plan_serial_and_backwards(tmp_path):
    backwards = run("plan-security-audit", _plan(AUDIT, [(0, 1), (1, 2), (2, 3)]), tmp_path)
    assert not backwards.passed
    assert backwards.checks["direction"] == 0 and backwards.checks["critical_path"] == 4
    assert backwards.checks["parallelism"] < 30
    few = run("plan-security-audit", [bash_call('bd create "Inventory secrets"')], tmp_path)
    assert few.score == 0


def test_plan_cycle_is_refused_by_bd(tmp_path):
    result = run("plan-security-audit", _plan(AUDIT, [(1, 0), (0, 1)]), tmp_path)
    assert result.checks["cycle_free"] == 20  # `bd dep add` refused the edge closing the cycle


# --- code execution ---------------------------------------------------------------------------

MAIL_FIXED = """def format_subject(rig, bead_id, text):
    return f"[{rig}] {bead_id}: {text.strip()}"
"""


def test_pytest_pass_rate(tmp_path):
    good = run("code-fix-mail-subject", [write_call("beadutil/mail.py", MAIL_FIXED),
                                         bash_call("python -m pytest -q tests/test_mail.py")],
               tmp_path)  # fmt: skip
    assert good.passed and good.checks["targets_passed"] == "1/1", good.checks


def test_pytest_regressions_and_protected_tests(tmp_path):
    # fixes lower case, but drops label(): test_basics::test_label regresses
    regress = run("code-fix-priority", [write_call("beadutil/priority.py",
        "def parse_priority(text):\n    return int(text.upper().removeprefix('P'))\n")],
        tmp_path)  # fmt: skip
    assert not regress.passed
    assert "tests/test_basics.py::test_label" in regress.checks["regressions"]
    cheat = run("code-fix-mail-subject", [write_call("tests/test_mail.py", "def test_x():\n"
                                                     "    pass\n")], tmp_path)  # fmt: skip
    assert cheat.score == 0 and cheat.checks["protected_changed"]
