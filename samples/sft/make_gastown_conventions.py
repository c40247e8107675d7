"""Write the Gas Town conventions SFT set and its probe prompts (byte-identical on every run).

    python samples/sft/make_gastown_conventions.py   # rewrites the three files beside it

The set teaches one habit: where the town has a command, use it instead of raw shell, git,
GitHub or hand-edited files — ``bd create / ready / show / update / close / dep add`` for beads,
``gt sling`` to hand work to a polecat, ``gt mail send`` to message an agent, ``gt prime`` to load
context at the start of a session and ``gt handoff`` to pass a session on. Every convention has
its own prompt phrasings for training, for the held-out set and for the probes (no phrasing is
shared between them), and the work items of the held-out set and probes are not used in
training. Records follow ``dataload.schema.SFTExample``; provenance names this generated file
and line, with the sha256 of the example's turns.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20260301

POLECATS = ["furiosa", "nux", "slit", "rictus", "capable", "dag", "toast", "cheedo"]

# (title, how a user would describe it, type, priority)
WORK = [
    (
        "Fix flaky DHT bootstrap test",
        "the DHT bootstrap test fails about one run in five",
        "bug",
        1,
    ),
    (
        "Add retry to the gRPC stage client",
        "the stage client gives up after one failed call",
        "task",
        2,
    ),
    (
        "Document the training config fields",
        "nobody knows what half the training options do",
        "task",
        3,
    ),
    (
        "Stream activations in 1 MiB chunks",
        "activations are sent as one giant message",
        "feature",
        2,
    ),
    (
        "Refuse mismatched adapter configs",
        "replicas with different LoRA ranks try to average",
        "bug",
        1,
    ),
    (
        "Cache reference log-probs for DPO",
        "the reference model runs again every DPO step",
        "feature",
        2,
    ),
    ("Clean up stale tmux sessions", "dead polecat sessions are still open in tmux", "task", 3),
    ("Rotate the witness log file", "the witness log grew past two gigabytes", "task", 2),
    (
        "Handle SIGTERM in the gather service",
        "the gather service leaves temp files on SIGTERM",
        "bug",
        1,
    ),
    (
        "Add tokens/s to the trainer progress line",
        "the progress line shows loss but no speed",
        "feature",
        3,
    ),
    ("Pin the hivemind version", "a new hivemind release broke the averager", "bug", 0),
    ("Write a GGUF export smoke test", "GGUF exports are never loaded back in CI", "task", 2),
    ("Fix off-by-one in the KV-cache trim", "long sessions lose their last cached token", "bug", 1),
    (
        "Add a --dry-run flag to corpus build",
        "corpus build always writes a run directory",
        "feature",
        3,
    ),
    ("Quarantine base64 blobs in transcripts", "base64 blobs slip through the scrubber", "bug", 1),
    ("Speed up held-out evaluation", "held-out evaluation takes longer than training", "task", 2),
    (
        "Show peer load in swarm status",
        "swarm status does not say how busy each peer is",
        "feature",
        3,
    ),
    ("Validate rig.toml on startup", "a typo in rig.toml only shows up an hour later", "bug", 2),
    (
        "Split the stage executor module",
        "the stage executor file is over a thousand lines",
        "task",
        3,
    ),
    (
        "Add gradient clipping to the trainer",
        "the loss spikes after a few hundred steps",
        "feature",
        1,
    ),
    ("Fix unicode in the prompt formatter", "emoji in a prompt crash the formatter", "bug", 1),
    (
        "Record the order hash in run records",
        "we cannot tell which data order a run used",
        "task",
        2,
    ),
    ("Retry DHT announce on timeout", "a slow DHT makes stages drop out of routing", "bug", 1),
    ("Add a checkpoint prune command", "old checkpoints fill the disk", "feature", 3),
    ("Make the sampler seed per session", "two sessions with the same seed interfere", "bug", 2),
    ("Write the polecat onboarding doc", "new polecats keep asking the same questions", "task", 3),
    ("Limit gRPC message size", "a huge request can exhaust a stage's memory", "bug", 0),
    ("Add held-out loss to the dashboard", "the dashboard only plots training loss", "feature", 3),
    (
        "Fix deadlock in the averager shutdown",
        "stopping a replica mid-round hangs forever",
        "bug",
        0,
    ),
    ("Backfill provenance for old corpus runs", "early corpus runs lack input hashes", "task", 3),
    ("Add per-stage memory metrics", "we cannot see which stage runs out of memory", "feature", 2),
    (
        "Reject empty assistant turns in the corpus",
        "some examples end with an empty answer",
        "bug",
        2,
    ),
    ("Parallelize the secret scanner", "scrubbing the corpus uses one core", "task", 3),
    ("Support GGUF Q8_0 loading", "Q8_0 checkpoints fail to load", "feature", 2),
    (
        "Fix route selection with two replicas",
        "the router always picks the first replica",
        "bug",
        1,
    ),
    ("Add a smoke test for node0 demo", "the demo command broke twice this week", "task", 2),
    ("Expire stale DHT records faster", "dead peers stay in routing for a minute", "bug", 2),
    ("Log the config fingerprint at startup", "logs do not say which config was used", "task", 3),
    ("Add a resume test for the trainer", "resuming a run has never been tested", "task", 1),
    ("Compress averaged gradients", "averaging rounds move too many bytes", "feature", 2),
]


def _bead_id(rng: random.Random) -> str:
    return "gt-" + "".join(rng.choice("abcdefghijkmnpqrstuvwxyz0123456789") for _ in range(4))


SYSTEMS = {
    "mayor": "You are the mayor of Gas Town. You plan work as beads and sling it to polecats.",
    "polecat": "You are {polecat}, a polecat in the gastown rig. You work one bead at a time.",
    "witness": "You are the witness of the gastown rig. You watch polecats and report problems.",
    "deacon": "You are the deacon of Gas Town. You keep the town clean and running.",
    "crew": "You are a crew member in the gastown rig of Gas Town.",
    "boot": "You are boot, the watchdog that checks the deacon in Gas Town.",
}

# Each convention: its task partition, roles that use it, prompt phrasings for train / heldout /
# probe (disjoint), and the answer. Placeholders: {title} {desc} {bead} {polecat} {other}.
CONVENTIONS: dict[str, dict] = {
    "bd create": {
        "task": "bead-creation",
        "roles": ["mayor", "crew", "witness", "polecat"],
        "expect": r"\bbd create\b",
        "avoid": r"gh issue create|TODO\.md|>>\s*\.beads",
        "train": [
            "Please open an issue for this: {desc}.",
            "Can you file a ticket? {desc}.",
            "We should track this somewhere: {desc}.",
            "Make a new task: {title}.",
            "Log a bug for me — {desc}.",
            "Create an issue on GitHub for '{title}'.",
            "Add '{title}' to the TODO list.",
            "Write this down as work for later: {desc}.",
            "I just noticed {desc}. Record it so someone picks it up.",
            'Open a GitHub issue titled "{title}" please.',
        ],
        "heldout": [
            "Somebody needs to look into this: {desc}. Get it into the tracker.",
            "New work item, please: {title}.",
            "Jot down '{title}' so we don't forget it.",
        ],
        "probe": [
            "There's a problem: {desc}. Turn it into a tracked piece of work.",
            "How should I file the work '{title}'?",
        ],
    },
    "bd ready": {
        "task": "bead-lifecycle",
        "roles": ["polecat", "crew"],
        "expect": r"\bbd ready\b",
        "avoid": r"grep -r(n)? TODO|git log|gh issue list",
        "train": [
            "What should I work on next?",
            "Is there anything unblocked I can pick up?",
            "Show me the tasks that are ready to start.",
            "List the open issues that nobody is blocked on.",
            "I finished my last task. What's available now?",
            "grep the repo for TODOs so I can find something to do.",
            "Which work items have no open dependencies?",
            "Run gh issue list and tell me what's free.",
            "Find me something to do.",
            "What can be started right away?",
        ],
        "heldout": [
            "Out of work here — anything waiting for a pair of hands?",
            "Give me the list of unblocked work.",
            "Which tasks can a polecat start this minute?",
        ],
        "probe": [
            "I'm idle. How do I see which work is ready?",
            "Which beads can I start on now?",
        ],
    },
    "bd show": {
        "task": "bead-lifecycle",
        "roles": ["polecat", "crew", "witness", "mayor"],
        "expect": r"\bbd show\b",
        "avoid": r"cat \.beads|grep .*issues\.jsonl|jq",
        "train": [
            "What is {bead} about?",
            "Give me the details of {bead}.",
            "cat .beads/issues.jsonl and find {bead} for me.",
            "Remind me what {bead} asks for.",
            "Who owns {bead} and what's its status?",
            "Look up {bead}.",
            "Grep issues.jsonl for {bead}.",
            "Before I start: what are the acceptance criteria of {bead}?",
            "Pull up the description of {bead}.",
            "Use jq to print {bead} from the beads file.",
        ],
        "heldout": [
            "I was slung {bead}; what does it want from me?",
            "Open {bead} so I can read it.",
            "Is {bead} still open, and what's it for?",
        ],
        "probe": [
            "Tell me what {bead} is.",
            "How do I read the details of {bead}?",
        ],
    },
    "bd update": {
        "task": "bead-lifecycle",
        "roles": ["polecat", "crew"],
        "expect": r"\bbd update\b",
        "avoid": r"sed -i|vim? \.beads|issues\.jsonl",
        "train": [
            "I'm starting on {bead} now.",
            "Mark {bead} as in progress.",
            "Claim {bead} for me.",
            "Set {bead} to priority 0, it's urgent.",
            "Assign {bead} to {polecat}.",
            "Edit issues.jsonl and set the status of {bead} to in_progress.",
            "Change the status of {bead} to blocked.",
            "I'm picking up {bead}; let everyone know it's taken.",
            "sed the beads file so {bead} shows as in progress.",
            "Bump {bead} up to priority 1.",
        ],
        "heldout": [
            "Take {bead} — it's yours now, mark it so.",
            "{bead} is more important than we thought; raise its priority to 0.",
            "Flag {bead} as being worked on.",
        ],
        "probe": [
            "I'm beginning work on {bead}. Record that.",
            "Make {polecat} the owner of {bead}.",
        ],
    },
    "bd close": {
        "task": "bead-lifecycle",
        "roles": ["polecat", "crew", "mayor"],
        "expect": r"\bbd close\b",
        "avoid": r"sed -i|gh issue close|issues\.jsonl",
        "train": [
            "I'm done with {bead}; the tests pass.",
            "{bead} is finished. Close it out.",
            "Mark {bead} as done.",
            "Close the GitHub issue for {bead}.",
            "The fix for {bead} is merged. What now?",
            "{bead} turned out to be a duplicate. Get rid of it.",
            "Set {bead} to closed in issues.jsonl.",
            "Wrap up {bead}, it shipped.",
            "All acceptance criteria of {bead} are met.",
            "We won't do {bead} after all; close it.",
        ],
        "heldout": [
            "Work on {bead} is complete and verified.",
            "{bead} can be retired — the change landed this morning.",
            "Finish off {bead} in the tracker.",
        ],
        "probe": [
            "I've completed {bead}. How do I record that?",
            "{bead} is fixed and merged; close the loop.",
        ],
    },
    "bd dep add": {
        "task": "planning",
        "roles": ["mayor", "crew"],
        "expect": r"\bbd dep add\b",
        "avoid": r"blocked by|depends on",
        "train": [
            "{bead} can't start until {other} is done.",
            "Make {bead} depend on {other}.",
            "Note in the description of {bead} that it's blocked by {other}.",
            "{other} has to land before {bead}.",
            "Record that {bead} is waiting on {other}.",
            "Link {bead} to {other} so it's blocked.",
            "Add a dependency: {bead} needs {other}.",
            "Write 'blocked by {other}' into {bead}.",
            "{bead} builds on top of {other}; track that.",
            "Don't let anyone start {bead} before {other}.",
        ],
        "heldout": [
            "Order them: {other} first, then {bead}.",
            "{bead} has a prerequisite, {other}. Encode that.",
            "Tie {bead} to {other} so it isn't picked up too early.",
        ],
        "probe": [
            "{bead} is blocked by {other}. How do I express that?",
            "Make sure {bead} only becomes ready after {other}.",
        ],
    },
    "gt sling": {
        "task": "planning",
        "roles": ["mayor"],
        "expect": r"\bgt sling\b",
        "avoid": r"tmux send-keys|ssh ",
        "train": [
            "Give {bead} to {polecat}.",
            "Hand {bead} off to a polecat — {polecat} is free.",
            "Have {polecat} work on {bead}.",
            "tmux send-keys to {polecat}'s pane telling it to do {bead}.",
            "Dispatch {bead} to {polecat}.",
            "{polecat} is idle; put them on {bead}.",
            "Start a worker on {bead}. Use {polecat}.",
            "Send {bead} to {polecat} for implementation.",
            "Can {polecat} take {bead}? Make it happen.",
            "Get {bead} moving — assign a polecat ({polecat}).",
        ],
        "heldout": [
            "{bead} is ready and {polecat} has nothing to do. Connect them.",
            "Put {polecat} to work: {bead}.",
            "Route {bead} to {polecat}.",
        ],
        "probe": [
            "How do I get {polecat} working on {bead}?",
            "{bead} needs an implementer. {polecat} is available.",
        ],
    },
    "gt mail send": {
        "task": "communication",
        "roles": ["polecat", "deacon", "crew"],
        "expect": r"\bgt mail send\b",
        "avoid": r"\bmail -s|slack|echo .*>>",
        "train": [
            "Tell the mayor that {bead} is blocked on review.",
            "Let the witness know that {polecat} seems stuck.",
            "Message {polecat}: the API for {bead} changed.",
            "Email the mayor a status update on {bead}.",
            "Ping the witness that I'm going offline.",
            "Post in Slack that {bead} needs a reviewer.",
            "Send the deacon a note: disk is almost full.",
            "Write to {polecat} that their branch conflicts with mine.",
            "Inform the mayor that {bead} will take another day.",
            "Notify the crew that the build is broken.",
        ],
        "heldout": [
            "Drop the mayor a line: {bead} needs a decision.",
            "Warn {polecat} that I'm about to change the schema.",
            "Report to the witness that {bead} keeps failing tests.",
        ],
        "probe": [
            "I need to tell the mayor something about {bead}. How?",
            "Let {polecat} know I finished the shared fixture.",
        ],
    },
    "gt prime": {
        "task": "session-start",
        "roles": ["polecat", "crew", "witness", "deacon", "mayor"],
        "expect": r"\bgt prime\b",
        "avoid": r"cat CLAUDE\.md|cat AGENTS\.md",
        "train": [
            "New session. Where do I start?",
            "I just woke up in this rig and have no context.",
            "Read CLAUDE.md and AGENTS.md so you know the rules.",
            "You've been restarted. Catch up.",
            "Fresh session — get yourself oriented.",
            "Before you do anything, load the town's context.",
            "cat all the docs so you know what's going on.",
            "I don't remember what I was doing. Help.",
            "Session started for {bead}. First step?",
            "You're a new polecat here. Get up to speed.",
        ],
        "heldout": [
            "Starting cold in the gastown rig; what's the first command?",
            "Your context was wiped. Reorient.",
            "Begin the session properly.",
        ],
        "probe": [
            "I'm a fresh agent session in Gas Town. What do I run first?",
            "How do I load my role's context at the start of a session?",
        ],
    },
    "gt handoff": {
        "task": "session-end",
        "roles": ["polecat", "crew", "mayor", "witness"],
        "expect": r"\bgt handoff\b",
        "avoid": r"exit\b|NOTES\.md|handoff\.txt",
        "train": [
            "My context window is almost full.",
            "I need to stop now; {bead} is half done.",
            "Write my notes to handoff.txt and exit.",
            "Time to end this session and let a fresh one continue.",
            "The conversation is getting too long to be useful.",
            "Save where I am on {bead} and restart.",
            "I'm running out of context in the middle of {bead}.",
            "Just exit, the next session will figure it out.",
            "Pass {bead} on to the next session.",
            "Wrap up this session cleanly.",
        ],
        "heldout": [
            "This session is nearly out of room. What now?",
            "Hand the rest of {bead} over to a new session.",
            "I have to go; keep {bead} moving without me.",
        ],
        "probe": [
            "My context is nearly exhausted while working on {bead}. What do I do?",
            "How do I end this session so the next one picks up {bead}?",
        ],
    },
}

LEADS = {
    "bd create": [
        "The town tracks work as beads, so I'll file it with bd:",
        "Filing a bead rather than a GitHub issue or a TODO note:",
        "Tracked work goes into beads:",
    ],
    "bd ready": [
        "bd knows which beads have no open blockers:",
        "Ready work comes from the bead tracker, not from grepping the code:",
        "Checking the ready queue:",
    ],
    "bd show": [
        "I'll read the bead itself instead of grepping the JSONL:",
        "bd shows the bead with its status, owner and description:",
        "Looking it up:",
    ],
    "bd update": [
        "Bead fields change through bd, never by editing issues.jsonl:",
        "Updating the bead:",
        "I'll update it with bd so the change is tracked:",
    ],
    "bd close": [
        "Closing the bead with a reason:",
        "Done work is closed in beads:",
        "I'll close it with bd, not by editing the file:",
    ],
    "bd dep add": [
        "Dependencies are bead links, so bd ready respects them:",
        "Adding the dependency in beads:",
        "I'll record it as a bead dependency:",
    ],
    "gt sling": [
        "Work is handed to a polecat with gt sling:",
        "Slinging it:",
        "I'll sling the bead so the polecat gets it on its hook:",
    ],
    "gt mail send": [
        "Agents talk through town mail:",
        "Sending it as gt mail:",
        "I'll use gt mail so it lands in their inbox:",
    ],
    "gt prime": [
        "First I load my role's context with gt prime:",
        "A session starts with gt prime:",
        "Priming the session:",
    ],
    "gt handoff": [
        "I'll hand off so a fresh session continues with my notes:",
        "Time for a handoff:",
        "Handing off the session with gt handoff:",
    ],
}


def _q(text: str) -> str:
    return text.replace('"', "'")


def _answer(conv: str, p: dict, rng: random.Random) -> list[tuple[str, str]]:
    """Assistant (and tool) turns answering one prompt; (speaker, text) pairs."""
    lead = rng.choice(LEADS[conv])
    bead, other, polecat, title = p["bead"], p["other"], p["polecat"], p["title"]
    if conv == "bd create":
        cmd = (
            f'bd create --title "{_q(title)}" --type {p["type"]} --priority {p["priority"]}'
            f' --description "{_q(p["desc"][:1].upper() + p["desc"][1:])}."'
        )
        if rng.random() < 0.3:
            return [
                ("assistant", f"{lead}\n$ {cmd}"),
                ("user", f"[tool output]\nCreated {bead}: {title}"),
                ("assistant", f"Filed as {bead}. It will show up in bd ready."),
            ]
        return [("assistant", f"{lead}\n$ {cmd}")]
    if conv == "bd ready":
        if rng.random() < 0.4:
            return [
                ("assistant", f"{lead}\n$ bd ready"),
                (
                    "user",
                    f"[tool output]\n{bead} [P{p['priority']}] {title}\n{other} [P3] {p['title2']}",
                ),
                (
                    "assistant",
                    f"{bead} has the higher priority. Claiming it:\n"
                    f"$ bd update {bead} --status in_progress",
                ),
            ]
        return [("assistant", f"{lead}\n$ bd ready")]
    if conv == "bd show":
        return [("assistant", f"{lead}\n$ bd show {bead}")]
    if conv == "bd update":
        prompt = p["prompt"].replace(bead, "").lower()
        level = re.search(r"priority (\d)", prompt)
        if level or "important" in prompt:
            cmd = f"bd update {bead} --priority {level.group(1) if level else 0}"
        elif "blocked" in prompt:
            cmd = f"bd update {bead} --status blocked"
        elif polecat in p["prompt"]:
            cmd = f"bd update {bead} --assignee {polecat}"
        else:
            cmd = f"bd update {bead} --status in_progress"
        return [("assistant", f"{lead}\n$ {cmd}")]
    if conv == "bd close":
        prompt = p["prompt"].lower()
        reason = (
            "duplicate"
            if "duplicate" in prompt
            else "won't do"
            if "won't" in prompt
            else "done: merged and tests pass"
        )
        return [("assistant", f'{lead}\n$ bd close {bead} --reason "{reason}"')]
    if conv == "bd dep add":
        return [
            (
                "assistant",
                f"{lead}\n$ bd dep add {bead} {other}\n"
                f"{bead} now stays out of bd ready until {other} is closed.",
            )
        ]
    if conv == "gt sling":
        if rng.random() < 0.3:
            return [
                ("assistant", f"Checking it is ready first:\n$ bd show {bead}"),
                (
                    "user",
                    f"[tool output]\n{bead} [task P{p['priority']}] {title}\n"
                    "status: open, blockers: none",
                ),
                ("assistant", f"{lead}\n$ gt sling {bead} {polecat}"),
            ]
        return [("assistant", f"{lead}\n$ gt sling {bead} {polecat}")]
    if conv == "gt mail send":
        prompt = p["prompt"]
        to = (
            "mayor/"
            if "mayor" in prompt.lower()
            else "gastown/witness"
            if "witness" in prompt.lower()
            else "deacon/"
            if "deacon" in prompt.lower()
            else f"gastown/polecats/{polecat}"
            if polecat in prompt
            else "gastown/crew"
        )
        subject = _q(f"{bead}: status" if bead in prompt else "heads-up")
        said = re.split(r"\bthat\b|: ", prompt, maxsplit=1)
        body = _q(
            said[1].strip().rstrip(".?!")
            if len(said) == 2
            else f"Status update on {bead}: in progress"
            if bead in prompt
            else prompt.rstrip(".?!")
        )
        body = body[:1].upper() + body[1:]
        return [("assistant", f'{lead}\n$ gt mail send {to} -s "{subject}" -m "{body}"')]
    if conv == "gt prime":
        if rng.random() < 0.4:
            return [
                ("assistant", f"{lead}\n$ gt prime"),
                ("user", f"[tool output]\nRole: {p['role']} · rig gastown · hook: {bead}"),
                ("assistant", f"My hook holds {bead}. Reading it:\n$ bd show {bead}"),
            ]
        return [("assistant", f"{lead}\n$ gt prime")]
    if conv == "gt handoff":
        return [
            (
                "assistant",
                f'{lead}\n$ gt handoff -m "{bead}: {_q(title)} in progress; '
                'next: finish and run the tests"',
            )
        ]
    raise ValueError(conv)


def _params(rng: random.Random, work: list, prompt_tpl: str, role: str) -> dict:
    title, desc, kind, priority = rng.choice(work)
    title2 = rng.choice([w for w in work if w[0] != title])[0]
    bead, other = _bead_id(rng), _bead_id(rng)
    polecat = rng.choice(POLECATS)
    prompt = prompt_tpl.format(title=title, desc=desc, bead=bead, other=other, polecat=polecat)
    return {
        "title": title,
        "desc": desc,
        "type": kind,
        "priority": priority,
        "title2": title2,
        "bead": bead,
        "other": other,
        "polecat": polecat,
        "prompt": prompt,
        "role": role,
    }


def _record(split: str, line: int, role: str, task: str, turns: list[tuple[str, str]]) -> dict:
    turn_objs = [{"speaker": s, "text": t} for s, t in turns]
    digest = hashlib.sha256(json.dumps(turn_objs, sort_keys=True).encode()).hexdigest()
    return {
        "schema_version": "node0.sft/1",
        "id": f"sft-{digest[:16]}",
        "role": role,
        "task": task,
        "turns": turn_objs,
        "quality_score": 1.0,
        "provenance": {
            "source_kind": "doc",
            "file": f"samples/sft/gastown_conventions.{split}.jsonl",
            "line": line,
            "line_end": line,
            "rig": "gastown",
            "role": role,
            "session_id": None,
            "bead_id": None,
            "outcome": None,
            "sha256": digest,
        },
    }


def build() -> tuple[list[dict], list[dict], list[dict]]:
    rng = random.Random(SEED)
    work = list(WORK)
    rng.shuffle(work)
    train_work, eval_work = work[:32], work[32:]
    out: dict[str, list[dict]] = {"train": [], "heldout": []}
    probes: list[dict] = []
    for conv, spec in CONVENTIONS.items():
        for split, reps in (("train", 15), ("heldout", 3)):
            templates = spec[split]
            for i in range(reps):
                tpl = templates[i % len(templates)]
                role = rng.choice(spec["roles"])
                p = _params(rng, train_work if split == "train" else eval_work, tpl, role)
                turns: list[tuple[str, str]] = []
                if rng.random() < 0.75:
                    turns.append(("system", SYSTEMS[role].format(polecat=p["polecat"])))
                turns.append(("user", p["prompt"]))
                turns.extend(_answer(conv, p, rng))
                out[split].append((role, spec["task"], turns))
        for n, tpl in enumerate(spec["probe"], start=1):
            role = spec["roles"][n % len(spec["roles"])]
            p = _params(rng, eval_work, tpl, role)
            probes.append(
                {
                    "id": f"probe-{conv.replace(' ', '-')}-{n}",
                    "role": role,
                    "convention": conv,
                    "prompt": [
                        {"speaker": "system", "text": SYSTEMS[role].format(polecat=p["polecat"])},
                        {"speaker": "user", "text": p["prompt"]},
                    ],
                    "expect": spec["expect"],
                    "avoid": spec["avoid"],
                }
            )
    records = {}
    for split, items in out.items():
        rng.shuffle(items)
        records[split] = [
            _record(split, n, role, task, turns)
            for n, (role, task, turns) in enumerate(items, start=1)
        ]
    return records["train"], records["heldout"], probes


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows),
        encoding="utf-8",
    )


def main() -> None:
    train, heldout, probes = build()
    _write(HERE / "gastown_conventions.train.jsonl", train)
    _write(HERE / "gastown_conventions.heldout.jsonl", heldout)
    _write(HERE / "probes.jsonl", probes)
    print(f"train {len(train)}, heldout {len(heldout)}, probes {len(probes)}")


if __name__ == "__main__":
    main()
