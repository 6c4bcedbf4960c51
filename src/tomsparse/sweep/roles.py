"""Which prompts measure ToM and which are their controls: defined with the tasks, in
``tomsparse.data.tasks.roles`` (the score samples select by them too); the names the sweep's
statistics use, from there, and the classification as a table."""

import pandas as pd

from tomsparse.data.tasks.roles import (CONTROL, FACT, ROLE, ROLE_REASONS, TOM, natural_key,
                                        prompt_role, role_rows)

__all__ = ["CONTROL", "FACT", "ROLE", "ROLE_REASONS", "TOM", "natural_key", "prompt_role",
           "roles_table"]


def roles_table() -> pd.DataFrame:
    """The classification as a table (family, condition, probe, role, why)."""
    return pd.DataFrame(role_rows())
