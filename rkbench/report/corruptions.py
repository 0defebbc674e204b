"""Common corruptions per corruption (``rkbench report --per-corruption``): each leaderboard row's
accuracy on each corruption, averaged over its severities, beside the mean over all of them
(the ``corruptions`` column). Read from ``metrics.json`` (``corruptions``), never from torch."""
from __future__ import annotations

import pandas as pd

from ..errors import RkbenchError
from .frame import CORRUPTIONS, ID_COLUMNS


def per_corruption_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per leaderboard row that was evaluated on corruptions: clean, the mean corruption
    accuracy, then one column per corruption (%, mean over severities and seeds)."""
    if "_corruptions" not in frame.columns:
        raise RkbenchError("--per-corruption needs the leaderboard itself (drop --pivot)")
    rows, names = [], []
    for _, row in frame.iterrows():
        per = row["_corruptions"]
        if not isinstance(per, dict) or not per:
            continue
        names += [name for name in per if name not in names]
        out = {c: row[c] for c in [*(["suite"] if "suite" in frame.columns else []), *ID_COLUMNS] if c in frame.columns}
        if "seeds" in frame.columns:
            out["seeds"] = row["seeds"]
        if "seed" in frame.columns:
            out["seed"] = row["seed"]
        out["clean"] = row["clean"]
        out[CORRUPTIONS] = row[CORRUPTIONS]
        out.update(per)
        rows.append(out)
    if not rows:
        raise RkbenchError("--per-corruption: no run was evaluated on common corruptions (evaluation.corruptions "
                           "in the suite)")
    head = [c for c in rows[0] if c not in names]
    return pd.DataFrame(rows).reindex(columns=head + names)
