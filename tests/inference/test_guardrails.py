"""Guardrails (inference/guardrails.py, inference/shell_parse.py): commands judged on the simple
commands they start, never by substring; the policy file through the one config loader."""

from __future__ import annotations

import os

import pytest

from base.errors import ConfigError
from inference.guardrails import (
    DEFAULT_GUARDRAILS,
    CommandPolicy,
    GuardrailsConfig,
    load_guardrails,
)
from inference.shell_parse import ShellSyntaxError, simple_commands

POLICY = CommandPolicy(denied_commands={"shutdown"})

ALLOWED = [
    "echo pkill",
    "grep -r 'sudo ls' .",
    "echo 'rm -rf /'",
    "git push --force-with-lease",
    "git push --force-with-lease=main:abc origin main",
    "git push origin main",
    "git log --oneline | head -3",
    "rm -rf build",
    "rm -f ./a.txt sub/b.txt",
    "rm -- -weird-name",
    "find . -name '*.pyc' -delete",
    "kill 12345",
    "kill -9 -- 12345",
    "cat notes.txt && ls -la 2>&1 >/dev/null",
    "sleep 1 &",
    "mkdir -p out && cd out && touch x",
]

DENIED = [
    ("pkill -f python", "broad_kill"),
    ("killall node", "broad_kill"),
    ("kill -9 -1", "broad_kill"),
    ("ls; /usr/bin/killall x", "broad_kill"),
    ("git push --force", "force_push"),
    ("git push -f origin main", "force_push"),
    ("git push -uf origin main", "force_push"),
    ("git -C repo push origin +main", "force_push"),
    ("sudo ls", "sudo"),
    ('bash -c "sudo ls"', "sudo"),
    ("sh -lc 'echo hi && sudo ls'", "sudo"),
    ("echo ok\nsudo reboot", "sudo"),
    ("echo $(sudo id)", "sudo"),
    ('echo "$(sudo id)"', "sudo"),
    ("echo `sudo id`", "sudo"),
    ("FOO=1 env -i nohup timeout 5 sudo ls", "sudo"),
    ("ls | xargs sudo rm", "sudo"),
    ("eval 'sudo ls'", "sudo"),
    ("s\\udo ls", "sudo"),
    ("echo hi;>out sudo ls", "sudo"),
    ("rm -rf ../x", "delete_outside_workdir"),
    ("rm -rf /", "delete_outside_workdir"),
    ("rm -rf ~", "delete_outside_workdir"),
    ("rm -rf ~/notes", "delete_outside_workdir"),
    ("rm -rf /tmp/elsewhere", "delete_outside_workdir"),
    ("rm -rf .", "delete_outside_workdir"),
    ("rm -rf sub/../../x", "delete_outside_workdir"),
    ("rmdir ..", "delete_outside_workdir"),
    ("unlink ../file", "delete_outside_workdir"),
    ("cd .. && rm -rf x", "delete_outside_workdir"),
    ("cd && rm -rf x", "delete_outside_workdir"),
    ("cd $SOMEWHERE; rm x", "delete_outside_workdir"),
    ("rm -rf $HOME", "delete_outside_workdir"),
    ("find .. -delete", "delete_outside_workdir"),
    ("find / -name x -exec rm {} \\;", "delete_outside_workdir"),
    ("ls | xargs rm -f", "delete_outside_workdir"),
    ("shutdown -h now", "denied_command"),
    ('echo "unclosed', "unparsable"),
]


@pytest.mark.parametrize("command", ALLOWED)
def test_allowed(command, tmp_path):
    (tmp_path / "sub").mkdir()
    assert POLICY.check(command, tmp_path) is None


@pytest.mark.parametrize(("command", "rule"), DENIED)
def test_denied_with_its_rule(command, rule, tmp_path):
    (tmp_path / "sub").mkdir()
    denial = POLICY.check(command, tmp_path)
    assert denial is not None and denial.rule == rule, denial
    assert denial.message().startswith(f"refused by guardrail {rule}: ")


def test_a_symlinked_directory_is_followed(tmp_path):
    outside = tmp_path / "outside"
    work = tmp_path / "work"
    outside.mkdir()
    work.mkdir()
    os.symlink(outside, work / "link")
    assert POLICY.check("rm -rf link/data", work).rule == "delete_outside_workdir"
    assert POLICY.check("rm link", work) is None  # removes the link itself, inside


def test_a_rule_left_out_of_the_policy_is_not_enforced(tmp_path):
    policy = CommandPolicy(deny=frozenset({"sudo"}))
    assert policy.check("pkill x", tmp_path) is None
    assert policy.check("sudo ls", tmp_path).rule == "sudo"


def test_shell_parse_splits_and_peels():
    commands = simple_commands("A=1 nohup ls -l | grep x && (cd d; make) || echo 'a;b' > f")
    assert [c.words for c in commands] == [
        ("ls", "-l"),
        ("grep", "x"),
        ("cd", "d"),
        ("make",),
        ("echo", "a;b"),
    ]
    (rm,) = simple_commands("find . | xargs -n 1 rm")[1:]
    assert rm.name == "rm" and rm.via_xargs
    with pytest.raises(ShellSyntaxError):
        simple_commands("echo 'open")


def test_the_default_policy_file_loads_through_the_config_loader(tmp_path):
    config, path, sha256 = load_guardrails()
    assert path == DEFAULT_GUARDRAILS and len(sha256) == 64
    assert set(config.deny) == {"broad_kill", "force_push", "delete_outside_workdir", "sudo"}
    policy = CommandPolicy.from_config(config)
    assert policy.check("shutdown now", tmp_path).rule == "denied_command"
    assert config == GuardrailsConfig.model_validate(config.model_dump())


def test_a_bad_policy_file_names_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("deny: [sudo, no_such_rule]\n")
    with pytest.raises(ConfigError, match="deny"):
        load_guardrails(bad)
    bad.write_text("max_steps: 0\n")
    with pytest.raises(ConfigError, match="max_steps"):
        load_guardrails(bad)
    bad.write_text("unknown_key: 1\n")
    with pytest.raises(ConfigError, match="unknown_key"):
        load_guardrails(bad)
