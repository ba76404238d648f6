"""Reading the final strong evaluation against the selection figure: which trials stand out, how well the
cheap validation attack ranked, and the offset it shares across trials.

The validation attack (PGD-``val_steps`` with ``val_restarts`` restarts) is cheap, so it reads higher
than the strong attack on *every* trial of a study: on the default digits study by 11-16 points, because
one restart misses what restarts and the targeted attack find, on every model alike. That offset is
systematic: it does not change which trial is best, so flagging every trial for it teaches the reader to
ignore the flag. What the flag is for is a trial that masks its gradients (quantized inputs, saturated
logits): the validation attack fails on *it* much more than on the others, so its gap stands out.

The rule, on the paired gaps g (validation attack minus strong attack on the same images, fractions)
of the evaluated trials:

- with at least :data:`MIN_TRIALS` trials: flag g > median(g) + max(3 points, 3 · 1.4826 · MAD(g)).
  The median is the study's systematic offset (robust to the one trial that masks); 1.4826 · MAD is
  the robust estimate of the gaps' standard deviation, and 3 of them is the usual outlier fence; the
  3-point floor keeps sampling noise (a few images of a few hundred) from flagging when the gaps agree
  closely (MAD near 0).
- with fewer trials there is nothing to tell an offset from an outlier: flag g > 3 points, and say so.

Each flag names its evidence (the trial's gap, the others' median, the threshold). The study-level
reading — Kendall's tau between the two figures, whether the top trial is the same, and the offset
stated once — is :func:`agreement_lines`.
"""
from __future__ import annotations

import math
import re
import statistics
from typing import Any

__all__ = ["GAP_FLAG", "MIN_TRIALS", "MAD_FENCE", "gap_threshold", "flag_reasons", "apply_flags", "kendall_tau",
           "agreement", "agreement_lines"]

GAP_FLAG = 0.03  # fraction: 3 points, the smallest gap the flag ever marks
MIN_TRIALS = 3  # fewer evaluated trials: no median to compare a gap with
MAD_FENCE = 3.0  # robust standard deviations above the median gap
_MAD_TO_SD = 1.4826  # MAD of a normal distribution times this is its standard deviation


def gap_threshold(gaps: list[float]) -> tuple[float, float | None]:
    """``(threshold, median)`` for ``gaps`` (fractions): a gap above the threshold is flagged. The median
    is None with fewer than :data:`MIN_TRIALS` gaps (the threshold is then the fixed 3 points)."""
    if len(gaps) < MIN_TRIALS:
        return GAP_FLAG, None
    med = statistics.median(gaps)
    mad = statistics.median(abs(g - med) for g in gaps)
    return med + max(GAP_FLAG, MAD_FENCE * _MAD_TO_SD * mad), med


def flag_reasons(entries: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Trial id -> why it is flagged (plain text naming the evidence), for the flagged trials only.
    ``entries``: final_eval.json's ``trials`` (each with its paired ``gap``, a fraction)."""
    gaps = {t: float(e["gap"]) for t, e in entries.items() if isinstance(e.get("gap"), (int, float))}
    threshold, med = gap_threshold(list(gaps.values()))
    out = {}
    for t, g in gaps.items():
        if g > threshold + 1e-9:
            if med is None:
                out[t] = (f"gap {100 * g:.1f} points > {100 * GAP_FLAG:g} (only {len(gaps)} trial(s) evaluated: too "
                          "few to tell one trial's masking from the validation attack's offset on every trial)")
            else:
                out[t] = (f"gap {100 * g:.1f} points, far above the {len(gaps)} evaluated trials' median "
                          f"{100 * med:.1f} (threshold {100 * threshold:.1f}: median + max(3 points, 3 robust SDs))")
    return out


def apply_flags(final: dict[str, Any]) -> dict[str, Any]:
    """Set every entry's ``flag`` (bool) and ``flag_reason`` (str, "" when not flagged) from the rule over
    all of ``final``'s entries; returns ``final`` (changed in place). Files written before this rule carry
    the old per-trial 3-point flag: reading them through here gives the new one."""
    entries = final.get("trials") or {}
    reasons = flag_reasons(entries)
    for t, e in entries.items():
        e["flag"] = t in reasons
        e["flag_reason"] = reasons.get(t, "")
    return final


def kendall_tau(xs: list[float], ys: list[float]) -> float | None:
    """Kendall's tau-b between two paired lists (ties in either count as neither concordant nor
    discordant); None with fewer than 2 pairs or when one list is constant."""
    n = len(xs)
    conc = disc = tx = ty = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = xs[i] - xs[j], ys[i] - ys[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif (dx > 0) == (dy > 0):
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + tx) * (conc + disc + ty))
    return (conc - disc) / denom if n >= 2 and denom > 0 else None


def agreement(final: dict[str, Any]) -> dict[str, Any] | None:
    """How the selection figure and the strong figure agree over the evaluated trials: ``n``, ``tau``
    (Kendall's tau-b, None when undefined), ``top_selection`` / ``top_strong`` (trial ids), ``gap_lo`` /
    ``gap_hi`` (fractions, over the unflagged trials), ``offset_on`` (how many unflagged trials read more
    than 3 points above the strong attack; ``offset_lo`` / ``offset_hi``: their range), ``unflagged``, ``val_restarts`` (parsed from the validation
    attack's name, None if unknown). None without entries."""
    entries = {t: e for t, e in (final.get("trials") or {}).items()
               if isinstance(e.get("robust_acc"), (int, float)) and isinstance(e.get("gap"), (int, float))}
    if not entries:
        return None
    reasons = flag_reasons(entries)
    ids = sorted(entries)
    sel = [entries[t]["selection_robust_acc"] for t in ids]
    strong = [entries[t]["robust_acc"] for t in ids]
    calm = [entries[t]["gap"] for t in ids if t not in reasons]
    above = [g for g in calm if g > GAP_FLAG + 1e-9]
    m = re.fullmatch(r"pgd-(\d+)-(\d+)", str(next(iter(entries.values())).get("val_attack", "")))
    return {"n": len(ids), "tau": kendall_tau(sel, strong),
            "top_selection": max(ids, key=lambda t: (entries[t]["selection_robust_acc"], t)),
            "top_strong": max(ids, key=lambda t: (entries[t]["robust_acc"], t)),
            "gap_lo": min(calm) if calm else None, "gap_hi": max(calm) if calm else None,
            "offset_on": len(above), "offset_lo": min(above) if above else None,
            "offset_hi": max(above) if above else None, "unflagged": len(calm),
            "flagged": len(reasons), "val_restarts": int(m[2]) if m else None,
            "val_attack": str(next(iter(entries.values())).get("val_attack", "the validation attack")).upper()}


def agreement_lines(final: dict[str, Any]) -> list[str]:
    """The study-level reading, for people: rank agreement, then the systematic offset, stated once."""
    a = agreement(final)
    if a is None:
        return []
    tau = "undefined (fewer than 2 distinct figures)" if a["tau"] is None else f"{a['tau']:+.2f}"
    same = (f"the top trial is the same ({a['top_strong']})" if a["top_selection"] == a["top_strong"] else
            f"the top trial differs: {a['top_strong']} by the strong figure, {a['top_selection']} by selection")
    lines = [f"rank agreement of the selection and strong figures over the {a['n']} evaluated trials: Kendall's "
             f"tau {tau}; {same}"]
    if a["unflagged"] >= MIN_TRIALS and a["offset_on"] == a["unflagged"]:
        on = "every evaluated trial" + (" not flagged" if a["flagged"] else "")
        restarts = f"val_restarts (now {a['val_restarts']})" if a["val_restarts"] is not None else "val_restarts"
        lines.append(f"the validation attack ({a['val_attack']}) read {100 * a['gap_lo']:.1f}–{100 * a['gap_hi']:.1f} "
                     f"points above the strong attack on {on}: "
                     f"a systematic offset, not one trial's masking: it ranks, it does not measure (quote the strong "
                     f"figure); more {restarts} shrink it, at the cost of one validation attack per restart")
    elif a["unflagged"] >= MIN_TRIALS and a["offset_on"] * 2 > a["unflagged"]:
        # Most trials far above, some close: not one offset shared by every trial, and too many alike for the
        # median rule to single any out. Gradient masking in most of the trials reads exactly like this.
        lines.append(f"the validation attack ({a['val_attack']}) read {100 * a['offset_lo']:.1f}–"
                     f"{100 * a['offset_hi']:.1f} points above the strong attack on {a['offset_on']} of "
                     f"{a['unflagged']} evaluated trials{' not flagged' if a['flagged'] else ''} and within "
                     f"{100 * GAP_FLAG:g} points on the others: not an offset every trial shares, and too many alike "
                     "for the per-trial rule to single one out (masking in most trials reads the same); quote the "
                     "strong figure, and check those trials with `advtune eval --strict` on the test split "
                     "(Carlini et al.'s sanity checks)")
    if a["flagged"]:
        lines.append(f"{a['flagged']} trial(s) flagged: their gap stands out from the others' (possible gradient "
                     "masking); `advtune eval --strict` on the test split runs Carlini et al.'s sanity checks")
    return lines
