"""Re-running a model card's claim (``python -m core verify``): the weights' hash checked, the
stated audit run again on the stated images (or a seeded part of them), and each figure judged
paired, image by image, against the card's own per-image record:

- *reproduced*: the re-run does not find the claim too high beyond chance (McNemar's exact
  test on the images the two disagree about, one-sided at 5%);
- *lower*: it does, overstated by k images (those the claim calls robust and the re-run broke,
  less those the other way round);
- *not comparable*: other images or another cascade version.

A card whose figure does not match its own per-image record overstates by that difference."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from core.confidence import chance
from core.jobs import card as cards
from core.jobs.specs import AuditSpec, ImportSpec
from core.jobs.store import MODEL_KINDS, RunStore
from core.paths import InputError, run_dir

ALPHA = 0.05


@dataclass
class Verdict:
    """One figure of the claim, judged."""

    figure: str
    status: str  # "reproduced", "lower" or "not comparable"
    text: str
    claimed: float | None = None
    found: float | None = None


@dataclass
class Outcome:
    """Everything verify says; ``holds`` decides its exit status."""

    verdicts: list[Verdict] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    model_run: str | None = None
    audit_run: str | None = None

    @property
    def holds(self) -> bool:
        """Whether every figure was reproduced."""
        return bool(self.verdicts) and all(v.status == "reproduced" for v in self.verdicts)


def read_card(path: str | Path) -> dict:
    """A card from its JSON file, checked (one line when it is not a card)."""
    try:
        card = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"card {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"card {path} is not JSON: {err}") from None
    if not isinstance(card, dict):
        raise InputError(f"card {path} is not a JSON object")
    cards.check(card)
    return card


def model_for(store: RunStore, card: dict, weights: str | None, run_id: str | None,
              data_dir: str | None = None, device: str = "auto") -> tuple[str, list[str]]:
    """The model run to re-audit: ``run_id`` or an import of ``weights``, refused when its
    SHA-256 is not the card's. Returns the run id and what was said."""
    from core import imported

    lab = card["robustlab"]
    if run_id:
        run = store.get(run_id)
        if run.kind not in MODEL_KINDS or run.status != "completed":
            raise InputError(f"run {run_id} is not a completed training or import run")
        digest = cards.weights_sha256(run, lab.get("which", "final"))
        _same_weights(digest, lab["weights_sha256"], f"run {run_id}")
        return run_id, [f"weights: run {run_id}, sha256 {digest[:16]}… matches the card"]
    if not weights:
        raise InputError("give the weights to verify: --weights FILE or --run RUN")
    if not Path(weights).is_file():
        raise InputError(f"weights file {weights} does not exist")
    digest = imported.sha256(weights)
    _same_weights(digest, lab["weights_sha256"], weights)
    spec = _import_spec(card, str(Path(weights).resolve()), data_dir, device)
    from core.jobs.runner import create, execute

    run = create(store, spec, name=f"verify {Path(weights).name}")
    execute(store, run, echo=False)
    return run, [f"weights: {weights}, sha256 {digest[:16]}… matches the card; imported as {run}"]


def _same_weights(found: str, stated: str, what: str) -> None:
    if found != stated:
        raise InputError(f"{what} has sha256 {found[:16]}…, the card's weights {stated[:16]}…: "
                         "these are other weights, so the claim is not theirs")


def _import_spec(card: dict, path: str, data_dir: str | None, device: str) -> ImportSpec:
    given = card["robustlab"]["input"]
    if given.get("inside_the_model"):  # a lab-trained model: its normalization is in the file
        return ImportSpec(file=path, dataset=card["dataset"], arch=given["model"],
                          data_dir=data_dir, device=device, n_check=100)
    return ImportSpec(file=path, dataset=card["dataset"], arch=given.get("arch"),
                      module=given.get("module"), mean=given.get("mean"),
                      std=given.get("std"), input_scale=given.get("input_scale", 1),
                      classes=given.get("classes"), data_dir=data_dir, device=device,
                      n_check=100)


def audit_spec(card: dict, model_run: str, n: int | None, device: str) -> AuditSpec:
    """The card's audit, exactly (``n`` below the card's: the first ``n`` of its seeded
    sample, which are a part of its images)."""
    lab = card["robustlab"]
    img, cascade = lab["images"], lab["cascade"]
    if n is not None and not 0 < n <= img["n_examples"]:
        raise InputError(f"-n must be between 1 and the card's {img['n_examples']:,} images, "
                         f"got {n}")
    return AuditSpec(model_run=model_run, which=lab.get("which", "final"), norm=lab["norm"],
                     eps=lab["eps"], version=cascade["version"], n=n or img["n_examples"],
                     seed=img["seed"], steps=cascade["steps"], queries=cascade["queries"],
                     device=device)


def comparable(card: dict, version: str | None = None) -> str | None:
    """Why the card's audit cannot be re-run here (another cascade), or None."""
    cascade = card["robustlab"]["cascade"]
    if cascade["code"] != cards.CASCADE_CODE or (version and version != cascade["version"]):
        return (f"not comparable: the card's cascade is {cascade['code']} "
                f"{cascade['version']}, this lab runs {cards.CASCADE_CODE} "
                f"{version or cascade['version']}")
    return None


def compare(card: dict, report: dict) -> list[Verdict]:
    """The claim's figures against a re-run's audit.json, paired where the images match."""
    img = card["robustlab"]["images"]
    reason = comparable(card, report["version"])
    stated = _stated_positions(card)
    ours = [e["index"] for e in report["examples"]]
    if reason is None and (stated is None or not set(ours) <= set(stated)):
        reason = ("not comparable: the re-run's images are not the card's (its positions hash "
                  f"{img['positions_sha256'][:12]}… names other images of this test split)")
    if reason:
        return [Verdict(f, "not comparable", reason) for f in ("clean_acc", "autoattack_acc")]
    where = {pos: k for k, pos in enumerate(stated)}
    out = []
    for figure, key, test in (("clean_acc", "clean_correct",
                               lambda e: e["clean_pred"] == e["label"]),
                              ("autoattack_acc", "robust", lambda e: bool(e["robust"]))):
        bits = cards.mask_bits(img[key], img["n_examples"])
        claim_bits = [bits[where[pos]] for pos in ours]
        found_bits = [test(e) for e in report["examples"]]
        out.append(_paired(figure, float(card[figure]) / 100, claim_bits, found_bits,
                           img["n_examples"], own=sum(bits)))
    return out


def _stated_positions(card: dict) -> list[int] | None:
    """The card's image positions (its seeded sample of the test split), or None when they
    do not hash to the card's."""
    from core import data

    img = card["robustlab"]["images"]
    split = data.load(card["dataset"], "test").subset(img["n_examples"], img["seed"])
    positions = split.original_index().tolist()
    return positions if cards.positions_sha256(positions) == img["positions_sha256"] else None


def _paired(figure: str, claimed: float, claim_bits: list[bool], found_bits: list[bool],
            n_card: int, own: int) -> Verdict:
    n = len(found_bits)
    record = sum(claim_bits)
    found = sum(found_bits)
    # images the claim counts and the re-run does not, and the other way round
    b = sum(c and not f for c, f in zip(claim_bits, found_bits))
    c = sum(f and not cl for cl, f in zip(claim_bits, found_bits))
    name = "robust accuracy" if figure == "autoattack_acc" else "clean accuracy"
    claimed_count = round(claimed * n_card)
    if claimed_count > own:
        gap = claimed_count - own
        return Verdict(figure, "lower", f"lower: the card's {name} {claimed:.2%} is {gap} "
                       f"image(s) ({gap / n_card:.2%}) above its own per-image record "
                       f"({own / n_card:.2%}), and the re-run found {found / n:.2%} "
                       f"({found} of {n})", claimed, found / n)
    p = chance(b, b + c, 0.5) if b + c else 1.0
    share_claim, share_found = record / n, found / n
    if b > c and p < ALPHA:
        return Verdict(figure, "lower", f"lower: the claim is overstated by {b - c} image(s) "
                       f"({(b - c) / n:.2%}): {b} it counts the re-run broke, {c} the other way "
                       f"(paired, McNemar p={p:.3g}); claim {share_claim:.2%}, re-run "
                       f"{share_found:.2%} on {n:,} images", claimed, share_found)
    return Verdict(figure, "reproduced", f"reproduced: {share_found:.2%} on {n:,} images "
                   f"against the claim's {share_claim:.2%} ({b} image(s) differ one way, {c} "
                   "the other: within chance, paired)" if b or c else
                   f"reproduced: {share_found:.2%} on {n:,} images, image for image",
                   claimed, share_found)


def verify(store: RunStore, card: dict, weights: str | None = None, run_id: str | None = None,
           n: int | None = None, data_dir: str | None = None, device: str = "auto",
           say=print) -> Outcome:
    """Check the weights' hash, re-run the card's audit on its images and judge each figure."""
    from core.jobs.runner import create, execute

    outcome = Outcome()
    reason = comparable(card)
    if reason:  # nothing to re-run: this lab's cascade is not the card's
        outcome.verdicts = [Verdict(f, "not comparable", reason)
                            for f in ("clean_acc", "autoattack_acc")]
        return outcome
    model_run, lines = model_for(store, card, weights, run_id, data_dir, device)
    for line in lines:
        say(line)
    spec = audit_spec(card, model_run, n, device)
    part = "" if spec.n == card["robustlab"]["images"]["n_examples"] else \
        (f" (a seeded part: {spec.n:,} of the card's "
         f"{card['robustlab']['images']['n_examples']:,} images)")
    say(f"re-running the {spec.version} audit at {card['robustlab']['threat']} on {spec.n:,} "
        f"images{part}")
    audit = create(store, spec)
    execute(store, audit)
    report = json.loads((run_dir(audit) / "audit.json").read_text())
    outcome.model_run, outcome.audit_run = model_run, audit
    outcome.verdicts = compare(card, report)
    return outcome
