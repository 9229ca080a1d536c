"""One rule for "is this figure as robust as the audit says": a stored robust accuracy of a
model (an attack run, a sweep row, a grid point, a curve, the overfitting guard) against the
audit of the same model and threat model.

- On shared images with both per-image outcomes known, the comparison is **paired** and exact:
  ``b`` images the figure calls robust that the audit broke, ``c`` the other way round;
  McNemar's exact test (one-sided, 5%) on those ``b + c`` discordant images decides whether
  the figure is above or below the audit beyond chance.
- Otherwise (other images, or outcomes not stored) the 95% intervals decide, and the sentence
  says the images differ or were not paired.
- A single-step attack (FGSM) or random noise is *expected weaker*: never a failure.
- The overfitting guard's figure is on held-out *training* images: other images, never blamed
  on a weak attack.
Every sentence states what was checked: above the audit, below it, the same within chance.
"""
from __future__ import annotations

from core import confidence

ALPHA = 0.05
EXPECTED_WEAKER = ("fgsm", "noise")


def paired_counts(figure: dict, audit: dict) -> tuple[int, int, int] | None:
    """(shared images, b, c) of a figure and an audit with per-image outcomes on common
    positions, or None when they cannot be paired."""
    if not figure.get("robust") or not audit.get("robust"):
        return None
    theirs = dict(zip(audit["positions"], audit["robust"]))
    shared = [(r, theirs[p]) for p, r in zip(figure["positions"], figure["robust"])
              if p in theirs]
    if not shared:
        return None
    b = sum(1 for f, a in shared if f and not a)
    c = sum(1 for f, a in shared if a and not f)
    return len(shared), b, c


def compare(figure: dict, audit: dict) -> dict:
    """How ``figure`` stands against ``audit`` (both dicts with ``acc``, ``n`` and, where
    known, ``positions`` and ``robust``): ``status`` (above, below, same, expected weaker,
    other images), ``overstates`` (the audit's indicator fails on it), ``paired`` and the
    ``sentence`` that says what was checked."""
    gap = (figure["acc"] - audit["acc"]) * 100
    if figure.get("images", "test") != "test":
        return _row("other images", False, False, (
            f"other images: {figure['n']:,} held-out training images against the audit's "
            f"{audit['n']:,} test images ({gap:+.1f} pp); a gap between two sets of images is "
            "not a weaker attack's, so no verdict on it"))
    if figure.get("attack") in EXPECTED_WEAKER:
        what = "random noise" if figure["attack"] == "noise" else "a single gradient step"
        return _row("expected weaker", False, False, (
            f"expected weaker: {what} is no robustness figure ({gap:+.1f} pp against the "
            "audit)"))
    counts = paired_counts(figure, audit)
    if counts is not None:
        return _paired(*counts)
    return _unpaired(figure, audit, gap)


def _paired(shared: int, b: int, c: int) -> dict:
    p_above = confidence.chance(b, b + c, 0.5) if b + c else 1.0
    p_below = confidence.chance(c, b + c, 0.5) if b + c else 1.0
    if b > c and p_above < ALPHA:
        return _row("above", True, True, (
            f"above the audit on the same {shared:,} images: it calls {b} of them robust that "
            f"the audit broke ({c} the other way; paired, McNemar p={p_above:.2g}): its attack "
            "misses adversarial examples the audit finds; believe the audit"), b, c)
    if c > b and p_below < ALPHA:
        return _row("below", False, True, (
            f"below the audit on the same {shared:,} images: it broke {c} the audit calls "
            f"robust ({b} the other way; paired, McNemar p={p_below:.2g}): a stronger attack "
            "there, so the audit's figure is too high"), b, c)
    return _row("same", False, True, (
        f"the same within chance on the same {shared:,} images: {b} robust only by it, {c} "
        "only by the audit (paired)"), b, c)


def _unpaired(figure: dict, audit: dict, gap: float) -> dict:
    same_set = figure.get("n") == audit["n"] and figure.get("seed") == audit.get("seed")
    where = ("the same images, per-image outcomes not stored" if same_set else
             f"other test images ({figure['n']:,} against the audit's {audit['n']:,})")
    if confidence.overstates(figure["acc"], figure["n"], audit["acc"], audit["n"]):
        return _row("above", True, False, (
            f"above the audit by {gap:.1f} pp beyond both 95% intervals ({where}, so not "
            "paired): its attack misses examples the audit finds; believe the audit"))
    if confidence.overstates(audit["acc"], audit["n"], figure["acc"], figure["n"]):
        return _row("below", False, False, (
            f"below the audit by {-gap:.1f} pp beyond both 95% intervals ({where}, so not "
            "paired): a stronger attack there, so the audit's figure is too high"))
    return _row("same", False, False, (
        f"the same within chance ({gap:+.1f} pp, inside the 95% intervals; {where}, so "
        "not paired)"))


def _row(status: str, overstates: bool, paired: bool, sentence: str, b: int | None = None,
         c: int | None = None) -> dict:
    return {"status": status, "overstates": overstates, "paired": paired,
            "sentence": sentence, "b": b, "c": c}


def paired_models(first: list[bool], second: list[bool]) -> dict:
    """Two models' per-image outcomes on the same images (robust, or correct): ``higher``,
    ``lower`` or ``same`` for the first against the second, by McNemar's exact test on the
    images they disagree about (one-sided, 5% each way), with the counts and the sentence."""
    if len(first) != len(second) or not first:
        raise ValueError("a paired comparison needs outcomes on the same images")
    only_first = sum(1 for a, b in zip(first, second) if a and not b)
    only_second = sum(1 for a, b in zip(first, second) if b and not a)
    pairs = only_first + only_second
    p_higher = confidence.chance(only_first, pairs, 0.5) if pairs else 1.0
    p_lower = confidence.chance(only_second, pairs, 0.5) if pairs else 1.0
    status = ("higher" if only_first > only_second and p_higher < ALPHA else
              "lower" if only_second > only_first and p_lower < ALPHA else "same")
    p = {"higher": p_higher, "lower": p_lower}.get(status, min(p_higher, p_lower))
    text = {"higher": "higher beyond chance", "lower": "lower beyond chance",
            "same": "the same within chance"}[status]
    return {"status": status, "only_first": only_first, "only_second": only_second, "p": p,
            "sentence": f"{text} on the same {len(first):,} images ({only_first} only the "
                        f"first, {only_second} only the second; paired, McNemar p={p:.2g})"}
