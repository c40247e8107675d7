"""A task's sandbox: a temp copy of its fixture rig, real ``git``, no network, its own ``HOME``.

Layout (``root`` is a fresh temp directory, removed after scoring)::

    root/work/        the rig the agent works in (fixture copy, files, .beads/, git repo)
    root/remote.git/  a local bare remote ``origin`` (fixtures with ``remote: true``)
    root/home/        HOME, with its own .gitconfig (GIT_CONFIG_NOSYSTEM; the host's is unseen)
    root/bin/         ``bd`` and ``gt``: the real tool behind an argv recorder, or the
                      recording shim (:mod:`evaluation.shim`) when the tool is absent
    root/tmp/         TMPDIR
    root/record.jsonl every bd/gt call, parsed

Isolation. Where the kernel allows (``unshare --mount --net``), every command of the agent runs
in its own mount and network namespace: every mount but ``root`` is remounted read-only (a
write outside the sandbox fails with EROFS) and the only network interface is a down loopback.
Elsewhere the sandbox says ``isolation: none`` in the report. Either way the environment is
rebuilt from nothing: no proxy variables, HOME and TMPDIR inside, PATH = shims, the project's
Python, the system's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from base.errors import ConfigError
from evaluation.shim import RECORD_ENV
from evaluation.task import FixtureSpec, fixtures_dir

REPO = Path(__file__).resolve().parent.parent
HOOK = "pre-commit"
GIT_USER = ("Eval Agent", "agent@eval.invalid")
FIXED_TIME = "2026-01-01T00:00:00Z"

# $1: the sandbox root (stays writable), $2: the command line
_LAUNCH = r"""
mount --bind "$1" "$1" || exit 125
for m in $(findmnt -rn -o TARGET | sort -ru); do
  case "$m" in "$1"|/proc|/proc/*|/sys|/sys/*|/dev|/dev/pts) continue;; esac
  mount -o remount,bind,ro "$m" 2>/dev/null
done
cd "$(pwd)" || exit 125  # the working directory again, now through the writable mount
exec bash -c "$2"
"""
_UNSHARE = ("unshare", "--mount", "--net", "--propagation", "private")


@cache
def namespace_available() -> bool:
    """Can this process give a command its own mount and network namespace?"""
    if shutil.which("unshare") is None or shutil.which("findmnt") is None:
        return False
    try:
        probe = subprocess.run([*_UNSHARE, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def tool_modes() -> dict[str, str]:
    """``bd`` / ``gt``: ``real`` (installed here, run behind a recorder) or ``recorded``
    (the shim parses, records and, for bd, applies the call to the rig's beads)."""
    return {tool: "real" if shutil.which(tool) else "recorded" for tool in ("bd", "gt")}


@dataclass
class Sandbox:
    """One task's sandbox (see the module doc); build it with :func:`create_sandbox`."""

    root: Path
    isolation: str
    tools: dict[str, str]
    initial: dict[str, Any] = field(default_factory=dict)

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def remote(self) -> Path:
        return self.root / "remote.git"

    @property
    def record(self) -> Path:
        return self.root / "record.jsonl"

    def env(self) -> dict[str, str]:
        """The environment of the agent's commands (nothing inherited but the locale)."""
        home = self.root / "home"
        path = [str(self.root / "bin"), str(Path(sys.executable).parent),
                "/usr/local/bin", "/usr/bin", "/bin"]  # fmt: skip
        return {
            "PATH": os.pathsep.join(path),
            "HOME": str(home),
            "TMPDIR": str(self.root / "tmp"),
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"),
            "GIT_TERMINAL_PROMPT": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "GT_RIG": "gastown",
            RECORD_ENV: str(self.record),
        }

    def shell(self) -> tuple[str, ...]:
        """The argv a command line is appended to (the namespace launcher, or plain bash)."""
        if self.isolation == "namespace":
            return (*_UNSHARE, "bash", "-c", _LAUNCH, "eval-sandbox", str(self.root))
        return ("bash", "-c")

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run git in the rig with the sandbox's environment (for setup and scoring)."""
        return run_git(self.work, self.env(), *args, check=check)

    def calls(self) -> list[dict[str, Any]]:
        """Every recorded bd/gt call, in order."""
        if not self.record.is_file():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line]

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def run_git(cwd: Path, env: dict[str, str], *args: str, check: bool = True):
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    if check and proc.returncode != 0:
        raise ConfigError(f"fixture setup: git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def _bead(item: dict[str, Any]) -> dict[str, Any]:
    """A fixture bead with bd's defaults filled in."""
    bead = {"status": "open", "priority": 2, "issue_type": "task", "description": "",
            "created_at": FIXED_TIME, "updated_at": FIXED_TIME, "created_by": "gastown/mayor",
            "dependencies": [], **item}  # fmt: skip
    bead["dependencies"] = [
        {"issue_id": bead["id"], "type": "blocks", **d} for d in bead["dependencies"]
    ]
    return bead


def _write_shims(bin_dir: Path, modes: dict[str, str]) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    for tool, mode in modes.items():
        if mode == "real":  # record argv, then the real tool does the work
            real = shutil.which(tool)
            body = (f'{python} -c "import json,os,sys; open(os.environ[\'{RECORD_ENV}\'],\'a\')'
                    f'.write(json.dumps({{\'tool\':\'{tool}\',\'argv\':sys.argv[1:],\'cwd\':'
                    f'os.getcwd(),\'real\':True}})+chr(10))" "$@"\nexec {real} "$@"\n')  # fmt: skip
        else:
            body = f'PYTHONPATH={REPO} exec {python} -m evaluation.shim {tool} "$@"\n'
        path = bin_dir / tool
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(0o755)


def create_sandbox(
    spec: FixtureSpec,
    suite_path: Path,
    *,
    isolation: str = "auto",
    parent: Path | None = None,
) -> Sandbox:
    """Build a task's sandbox from its fixture spec.

    Args:
        spec: the task's fixture.
        suite_path: the suite file (fixture folders are beside it).
        isolation: ``auto`` (namespace where available), ``namespace`` (required) or ``none``.
        parent: where the temp directory goes (None: the system's temp dir).

    Raises:
        ConfigError: a missing fixture folder, a git step that fails, or ``namespace``
            isolation asked for where the kernel refuses it.
    """
    if isolation == "namespace" and not namespace_available():
        raise ConfigError("sandbox isolation 'namespace' asked for, but unshare is refused here")
    mode = "namespace" if isolation != "none" and namespace_available() else "none"
    root = Path(tempfile.mkdtemp(prefix="node0-eval-", dir=parent)).resolve()
    box = Sandbox(root, mode, tool_modes())
    try:
        _populate(box, spec, suite_path)
    except BaseException:
        box.remove()
        raise
    return box


def _populate(box: Sandbox, spec: FixtureSpec, suite_path: Path) -> None:
    for sub in ("home", "tmp"):
        (box.root / sub).mkdir()
    _write_shims(box.root / "bin", box.tools)
    name, email = GIT_USER
    (box.root / "home" / ".gitconfig").write_text(
        f"[user]\n\tname = {name}\n\temail = {email}\n[init]\n\tdefaultBranch = main\n"
        "[advice]\n\tdetachedHead = false\n"
    )
    if spec.base:
        source = fixtures_dir(suite_path) / spec.base
        if not source.is_dir():
            raise ConfigError(f"no fixture folder {source}")
        shutil.copytree(source, box.work, symlinks=True)
    else:
        box.work.mkdir()
    for rel, text in spec.files.items():
        path = box.work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if spec.beads:
        beads = box.work / ".beads" / "issues.jsonl"
        beads.parent.mkdir(parents=True, exist_ok=True)
        with open(beads, "a") as handle:  # after the fixture folder's own beads
            handle.write("".join(json.dumps(_bead(b)) + "\n" for b in spec.beads))
    if spec.git or spec.hook or spec.remote or spec.branches or spec.main_after:
        _git_setup(box, spec, suite_path)
    from evaluation.beads_store import current

    beads = current(box.work)
    box.initial["bead_ids"] = sorted(beads)
    box.initial["bead_stamps"] = {k: b.get("updated_at") for k, b in beads.items()}


def _commit_files(box: Sandbox, files: dict[str, str], message: str) -> None:
    for rel, text in files.items():
        path = box.work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    box.git("add", "-A")
    box.git("commit", "-q", "--no-verify", "-m", message)


def _git_setup(box: Sandbox, spec: FixtureSpec, suite_path: Path) -> None:
    box.git("init", "-q", "-b", "main")
    box.git("add", "-A")
    box.git("commit", "-q", "--allow-empty", "-m", "Initial rig")
    for branch, files in spec.branches.items():
        box.git("checkout", "-q", "-b", branch, "main")
        _commit_files(box, files, f"{branch}: work in progress")
        box.git("checkout", "-q", "main")
    if spec.main_after:
        _commit_files(box, spec.main_after, "main: concurrent change")
    if spec.hook:
        hook = fixtures_dir(suite_path) / "_hooks" / HOOK
        target = box.work / ".git" / "hooks" / HOOK
        shutil.copyfile(hook, target)
        target.chmod(0o755)
    if spec.remote:
        run_git(
            box.root,
            box.env(),
            "clone",
            "-q",
            "--bare",
            "--single-branch",
            "-b",
            "main",
            str(box.work),
            str(box.remote),
        )
        box.git("remote", "add", "origin", str(box.remote))
        box.git("fetch", "-q", "origin")
        box.git("branch", "-q", "--set-upstream-to=origin/main", "main")
    box.initial["head"] = box.git("rev-parse", "HEAD").stdout.strip()
    box.initial["branches"] = sorted(
        box.git("for-each-ref", "--format=%(refname:short)", "refs/heads").stdout.split()
    )
