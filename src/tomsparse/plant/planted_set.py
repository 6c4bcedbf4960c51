"""The planted set P and how a mask overlaps it.

Per target matrix (the 7 roles the masks use, ``lm.description.matrices``) P holds
``max(1, round(density * numel))`` flat indices of the (out_features, in_features) matrix, drawn
uniformly without replacement by ``masks.random_indices`` under a name salted with
``PLANT_SALT``: the random masks of a sweep are prefixes of the ordering seeded by (seed,
matrix name), so an unsalted P drawn with seed 0 would *be* the random control of seed 0.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

from tomsparse.errors import UserError
from tomsparse.masks import random_indices

# The prefix of the matrix name that seeds P's draw (never a sweep's random-mask stream).
PLANT_SALT = "planted"
# The name prefix of the ground-truth check's random control set.
CONTROL_SALT = "planted-control"


def check_density(density: float) -> float:
    density = float(density)
    if not 0.0 < density < 1.0 or density != density:
        raise UserError(f"--density {density!r}: the planted fraction of each matrix must lie "
                        "in (0, 1), e.g. 1e-4")
    return density


def planted_count(numel: int, density: float) -> int:
    """round(density x numel), at least 1."""
    return max(1, int(round(check_density(density) * numel)))


def planted_indices(matrices: Iterable, density: float, seed: int,
                    salt: str = PLANT_SALT) -> dict[str, torch.Tensor]:
    """{matrix name: sorted 1-D int64 flat indices} of the planted set: per matrix
    ``planted_count(numel, density)`` distinct entries, seeded by (``seed``, salt:name)."""
    out = {}
    for mat in matrices:
        count = planted_count(mat.numel, density)
        idx = random_indices(mat.numel, count, int(seed), f"{salt}:{mat.name}")
        out[mat.name] = torch.sort(idx).values
    return out


def overlap_count(mask: torch.Tensor, planted: torch.Tensor) -> int:
    """|mask ∩ P| of two sets of flat indices of one matrix."""
    if mask.numel() == 0 or planted.numel() == 0:
        return 0
    return int(torch.isin(mask.reshape(-1).cpu(), planted.reshape(-1).cpu()).sum())


def role_of(name: str) -> str:
    """The role of a canonical matrix name ``layers.<i>.<role>``."""
    return name.rsplit(".", 1)[-1]


def check_against(planted: Mapping[str, torch.Tensor], numels: Mapping[str, int],
                  where: str) -> None:
    """Refuse a planted set that does not fit the model: a matrix it lacks or the model lacks,
    an index out of range, a repeated index."""
    missing = sorted(set(numels) - set(planted))
    extra = sorted(set(planted) - set(numels))
    if missing or extra:
        what = (f"has no indices for matrix {missing[0]}" if missing
                else f"has indices for matrix {extra[0]}, which this model does not have")
        raise UserError(f"{where}: the planted set {what}; it was planted into another model: "
                        "load the model folder it was written with")
    for name, idx in planted.items():
        n = numels[name]
        if idx.dtype != torch.int64 or idx.dim() != 1:
            raise UserError(f"{where}: the indices of {name} are not a 1-D int64 tensor; the "
                            "file is damaged: plant the model again")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise UserError(f"{where}: an index of {name} lies outside its {n:,} entries; the "
                            "file is damaged or belongs to another model: plant it again")
        if torch.unique(idx).numel() != idx.numel():
            raise UserError(f"{where}: the indices of {name} repeat an entry; the file is "
                            "damaged: plant the model again")
