"""Robust fairness: the per-class worst-case accuracy of every leaderboard row (``--per-class``).

Fair-ARD (Yue et al., NeurIPS 2023) reports the worst class's robust accuracy beside the average:
a student can gain on average while its hardest class collapses. The counts come from the labels
and the per-example worst case stored in ``per_example.npz``; rows aggregated over seeds pool
their examples.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import RkbenchError
from .frame import ID_COLUMNS


def per_class_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per leaderboard row: worst case (average), each class's worst case (%), worst class."""
    if "_class_counts" not in frame.columns:
        raise RkbenchError("--per-class needs the leaderboard itself (drop --pivot)")
    rows, classes = [], set()
    for _, row in frame.iterrows():
        counts = row["_class_counts"]
        if not isinstance(counts, dict) or not counts:
            continue
        classes |= set(counts)
        out = {c: row[c] for c in [*(["suite"] if "suite" in frame.columns else []), *ID_COLUMNS] if c in frame.columns}
        out["seeds"] = row["seeds"] if "seeds" in frame.columns else 1
        if "seed" in frame.columns:
            out["seed"] = row["seed"]
        out["worst_case"] = row["worst_case"]
        out.update({str(c): 100.0 * k / n if n else np.nan for c, (k, n) in counts.items()})
        out["worst_class"] = min(100.0 * k / n for k, n in counts.values() if n)
        out["worst_class_label"] = str(min((k / n, c) for c, (k, n) in counts.items() if n)[1])
        rows.append(out)
    if not rows:
        raise RkbenchError("--per-class: no run has its labels stored in per_example.npz (runs written before "
                           "labels were stored: evaluate them again with a current rkbench)")
    class_columns = [str(c) for c in sorted(classes)]
    head = [c for c in rows[0] if c not in class_columns and c not in ("worst_class", "worst_class_label")]
    return pd.DataFrame(rows).reindex(columns=head + class_columns + ["worst_class", "worst_class_label"])
