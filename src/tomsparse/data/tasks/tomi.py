"""ToMi items: the 100 shipped in the inspect-ai wheel, or a file in the same format.

Each line is ``{"input": [{"role": "user", "content": story + " " + question}], "target":
location}``. The story moves one object from a first container to a second one; the two
candidate answers of every question are those two containers, parsed from the story. Questions
come in four types: memory ("Where was the X at the beginning?"), reality ("Where is the X
really?"), first-order ("Where will A look for the X?") and second-order ("Where does A think
that B searches for the X?").

The wheel is located with ``importlib.util.find_spec`` and never imported (its package
``__init__`` pulls in a large stack).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from tomsparse.data.tasks.model import READ, Prompt
from tomsparse.errors import UserError
from tomsparse.safe_read import parse_json, read_text

TOMI_CONDITIONS = ("first-order", "second-order", "reality", "memory")
_WHEEL_FILE = ("dataset", "_examples", "theory_of_mind.jsonl")

_QUESTIONS = (
    ("memory", re.compile(r"^Where was the (?P<obj>\S+) at the beginning\?$")),
    ("reality", re.compile(r"^Where is the (?P<obj>\S+) really\?$")),
    ("first-order", re.compile(r"^Where will (?P<a>\S+) look for the (?P<obj>\S+)\?$")),
    ("second-order", re.compile(
        r"^Where does (?P<a>\S+) think that (?P<b>\S+) searches for the (?P<obj>\S+)\?$")),
)


@dataclass(frozen=True)
class TomiItem:
    story: str
    question: str
    qtype: str            # one of TOMI_CONDITIONS
    obj: str
    agent: str            # first-order / second-order: whose belief; "" otherwise
    other: str            # second-order: whom the agent thinks about; "" otherwise
    target: str
    first_location: str   # where the object starts
    last_location: str    # where it is moved to
    story_index: int      # stories are shared by several questions
    line: int

    @property
    def alternative(self) -> str:
        return self.last_location if self.target == self.first_location else self.first_location

    @property
    def belief(self) -> str:
        """For belief questions: whether the answer is the true (current) location."""
        if self.qtype not in ("first-order", "second-order"):
            return ""
        return "true belief" if self.target == self.last_location else "false belief"

    def lead_in(self) -> str:
        """The answer's opening, so that the next word is the location."""
        if self.qtype == "memory":
            return f"At the beginning, the {self.obj} was in the"
        if self.qtype == "reality":
            return f"The {self.obj} is really in the"
        if self.qtype == "first-order":
            return f"{self.agent} will look for the {self.obj} in the"
        return f"{self.agent} thinks that {self.other} searches for the {self.obj} in the"

    def prompt(self) -> Prompt:
        scenario = f"{self.qtype} ({self.belief})" if self.belief else self.qtype
        return Prompt(
            family="tomi", task_id=f"story{self.story_index}", task_index=self.story_index,
            condition=self.qtype, reversed=False, scenario=scenario, probe="",
            text=f"{READ} {self.story} Question: {self.question} Answer: {self.lead_in()}",
            expected=self.target, alternative=self.alternative,
            cell=f"line {self.line}")  # every question is its own cell


def wheel_path() -> Path:
    """The ToMi sample file inside the installed inspect-ai wheel."""
    spec = importlib.util.find_spec("inspect_ai")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the ToMi items ship in the inspect-ai wheel, which is not installed: "
                        "run `pip install --no-deps inspect-ai==0.3.285`")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*_WHEEL_FILE)
    if not path.is_file():
        raise UserError(f"{path} is missing from the installed inspect-ai; reinstall "
                        f"`pip install --no-deps inspect-ai==0.3.285`")
    return path


def _parse(content: str, target: str, where: str) -> dict:
    cut = content.rfind("Where ")
    if cut < 0:
        raise UserError(f"{where}: no 'Where ...?' question at the end of the text")
    story, question = content[:cut].strip(), content[cut:].strip()
    for qtype, pattern in _QUESTIONS:
        match = pattern.match(question)
        if match:
            break
    else:
        raise UserError(f"{where}: unknown question form {question!r}")
    obj = match.group("obj")
    starts = re.findall(rf"\bThe {re.escape(obj)} (?:is|are) in the (\S+?)\.", story)
    moves = re.findall(rf"\bmoved the {re.escape(obj)} to the (\S+?)\.", story)
    if len(starts) != 1 or len(moves) != 1:
        raise UserError(f"{where}: cannot find exactly one starting and one new location of "
                        f"the {obj} in the story")
    first, last = starts[0], moves[0]
    if first == last or target not in (first, last):
        raise UserError(f"{where}: target {target!r} is not one of the two locations "
                        f"{first!r} and {last!r}")
    groups = match.groupdict()
    return dict(story=story, question=question, qtype=qtype, obj=obj,
                agent=groups.get("a") or "", other=groups.get("b") or "", target=target,
                first_location=first, last_location=last)


def load_tomi(path: str | Path | None = None) -> list[TomiItem]:
    """ToMi items from ``path`` (default: the file in the inspect-ai wheel)."""
    path = Path(path) if path is not None else wheel_path()
    items: list[TomiItem] = []
    story_ids: dict[str, int] = {}
    lines = read_text(path, "ToMi file", kind="JSON lines").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        row = parse_json(line, where)  # size and nesting checked; one line naming it
        try:
            content = row["input"][0]["content"] if isinstance(row["input"], list) \
                else row["input"]
            target = row["target"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise UserError(f"{where}: expected a JSON object with 'input' (text or "
                            f"[{{'content': ...}}]) and 'target'") from None
        if not isinstance(content, str) or not isinstance(target, str):
            raise UserError(f"{where}: 'input' content and 'target' must be strings")
        fields = _parse(content, target.strip(), where)
        story_index = story_ids.setdefault(fields["story"], len(story_ids))
        items.append(TomiItem(story_index=story_index, line=number, **fields))
    if not items:
        raise UserError(f"{path}: no ToMi items in the file")
    return items
