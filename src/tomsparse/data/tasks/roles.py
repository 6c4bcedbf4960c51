"""Which prompts measure ToM and which are their controls (issue 15, part 1), from the task
definitions in ``tomsparse.data.tasks.model`` and ``tomsparse.data.tasks.tomi``:

* unexpected contents: probe b ("XNAM calls a friend to tell them ... full of") asks for the
  protagonist's belief; under *false belief* it expects the label's word (o2), so
  (false belief, b) is the ToM prompt. Probe b under *correct label*, *informed protagonist*
  and *open container* expects the true contents (belief = reality): those are its true-belief
  controls (same probe sentence, only the belief state differs). Probe a ("opens the CX and
  ... can clearly see that it is full of") asks for reality in every condition: role "fact",
  reported but neither ToM nor control.
* unexpected transfer: probe b is ``q2`` (where the protagonist will look), probe a ``q1``
  (where the object is). (false belief, b) expects the old location: ToM. Probe b under
  *no transfer*, *informed protagonist*, *present protagonist*: controls. Probe a: fact.
* irony: ``irony`` (remark contradicted by its context, answer "No") is ToM; ``irony
  reversed`` (the literal twin, answer "Yes") is its control.
* ToMi: first- and second-order belief questions whose answer is not the object's current
  place (scenario "... (false belief)") are ToM; the same question forms with a true belief
  are the controls (the matched control); reality and memory questions are "fact".
"""

from __future__ import annotations

import re

from tomsparse.data.tasks.model import (
    CONTENTS_CONDITIONS,
    IRONY_CONDITIONS,
    TRANSFER_CONDITIONS,
)
from tomsparse.data.tasks.tomi import TOMI_CONDITIONS

TOM, CONTROL, FACT = "tom", "control", "fact"

# (family, condition, probe) -> role; ToMi is decided by question type and belief (below).
ROLE: dict[tuple[str, str, str], str] = {}
for _c in CONTENTS_CONDITIONS:
    ROLE[("unexpected", _c, "b")] = TOM if _c == "false belief" else CONTROL
    ROLE[("unexpected", _c, "a")] = FACT
for _c in TRANSFER_CONDITIONS:
    ROLE[("transfer", _c, "b")] = TOM if _c == "false belief" else CONTROL
    ROLE[("transfer", _c, "a")] = FACT
ROLE[("irony", IRONY_CONDITIONS[0], "")] = TOM
ROLE[("irony", IRONY_CONDITIONS[1], "")] = CONTROL

ROLE_REASONS = {
    ("unexpected", TOM): "probe b (tells a friend) under false belief expects the label's word",
    ("unexpected", CONTROL): "probe b where belief = true contents (correct label, informed, "
                             "open container)",
    ("unexpected", FACT): "probe a (looks inside) asks for the true contents",
    ("transfer", TOM): "probe b (q2, where they will look) under false belief expects the "
                       "old place",
    ("transfer", CONTROL): "probe b where belief = reality (no transfer, informed, present)",
    ("transfer", FACT): "probe a (q1) asks where the object is",
    ("irony", TOM): "ironic remark contradicted by its context (No)",
    ("irony", CONTROL): "literal twin: context agrees with the remark (Yes)",
    ("tomi", TOM): "first/second-order belief question, false belief",
    ("tomi", CONTROL): "first/second-order belief question, true belief",
    ("tomi", FACT): "reality and memory questions",
}


def prompt_role(family: str, condition: str, probe: str, scenario: str = "") -> str:
    """``tom``, ``control``, ``fact`` or ``""`` (not used) for one prompt."""
    if family == "tomi":
        if condition in TOMI_CONDITIONS[:2]:
            if "(false belief)" in scenario:
                return TOM
            if "(true belief)" in scenario:
                return CONTROL
            return ""
        return FACT if condition in TOMI_CONDITIONS[2:] else ""
    return ROLE.get((family, condition, probe or ""), "")


def role_rows() -> list[dict]:
    """The classification as rows (family, condition, probe, role, why)."""
    rows = [{"family": f, "condition": c, "probe": p, "role": r,
             "why": ROLE_REASONS[(f, r)]} for (f, c, p), r in ROLE.items()]
    for c in TOMI_CONDITIONS:
        if c in TOMI_CONDITIONS[:2]:
            for belief, role in (("false belief", TOM), ("true belief", CONTROL)):
                rows.append({"family": "tomi", "condition": f"{c} ({belief})", "probe": "",
                             "role": role, "why": ROLE_REASONS[("tomi", role)]})
        else:
            rows.append({"family": "tomi", "condition": c, "probe": "", "role": FACT,
                         "why": ROLE_REASONS[("tomi", FACT)]})
    return rows


def natural_key(text: str):
    """Sort key putting "task2" before "task10" (task ids are numbered text)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]
