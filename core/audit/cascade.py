"""The AutoAttack cascade (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks"): each stage attacks only the
points still robust; robust accuracy and seconds are recorded after every stage, and for every
example which stage broke it."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from core import distributed
from core.attacks import APGD, APGDT, FABT, Square
from core.attacks.apgd import effective_loss
from core.attacks.contract import attack_mode, watching
from core.attacks.speed import LowPrecision
from core.data import TensorData
from core.threat import ThreatModel

VERSIONS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
            "fast": ("apgd-ce", "apgd-t")}


Progress = Callable[[int, int], None]


@dataclass
class Stage:
    """One attack of the cascade."""

    name: str
    attack: object


def stages(version: str, threat: ThreatModel, steps: int = 100, queries: int = 5000,
           seed: int = 0) -> list[Stage]:
    """The cascade's attacks for ``version``, AutoAttack's settings: 100 iterations and one run
    for APGD-CE, 9 target classes for APGD-T and FAB-T, 5,000 queries for Square."""
    ball = {"eps": threat.eps, "norm": threat.norm, "seed": seed}
    build = {"apgd-ce": lambda: APGD(steps=steps, loss="ce", **ball),
             "apgd-t": lambda: APGDT(steps=steps, **ball),
             "fab-t": lambda: FABT(steps=steps, **ball),
             "square": lambda: Square(queries=queries, **ball)}
    return [Stage(name, build[name]()) for name in VERSIONS[version]]


def predict_labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The float32 model's predicted classes (eval mode, no gradients)."""
    with torch.inference_mode(), attack_mode(model):
        return model(x).float().argmax(1)


ROBUST = -1  # the code of a point no stage broke; 0 is "misclassified clean", k + 1 stage k


def cascade(model: nn.Module, data: TensorData, plan: list[Stage], batch_size: int = 250,
            progress: Progress | None = None, ctx: distributed.Context | None = None,
            on_stage: Callable[[dict], None] | None = None, keep: int = 8,
            low_precision: bool = False, saved: Saved | None = None,
            on_batch: Callable[[Saved], None] | None = None) -> dict:
    """Run the stages in order, each on the points still robust, batch by batch. Returns the
    clean and robust accuracy, per-stage figures, the stage that broke each example, and silent
    successes, up to ``keep`` adversarial examples per stage (``shown``: position, image,
    prediction) and every adversarial example found (``broken``: position, image); ``on_stage`` gets each stage's row as soon as it is done (this process's
    share under torchrun; examples come from rank 0's share). Batches are fixed by position
    and every attack call is seeded per batch, so under torchrun (whole batches per rank) the
    result equals one process's, and so does a run continued from ``saved`` (what ``on_batch``
    was given after each finished batch). ``low_precision`` searches in bfloat16
    (:class:`core.attacks.speed.LowPrecision`); every verdict is still the float32 model's, and a
    point the bfloat16 search broke but float32 does not is searched again in float32."""
    ctx = ctx or distributed.Context()
    mine = distributed.my_positions(ctx, len(data), batch_size)
    local = _run_stages(model, data, mine, plan, batch_size, progress, on_stage, keep,
                        low_precision, saved, on_batch)
    shown = local.pop("shown")
    tensors = {"clean_pred": local.pop("clean_pred"), "code": local.pop("code")}
    broken = {"position": local.pop("broken"), "x_adv": local.pop("broken_x")}
    if ctx.world > 1:
        parts = distributed.gather_objects(ctx, broken)
        broken = {k: torch.cat([p[k] for p in parts]) for k in broken}
        tensors = distributed.gather_in_order(ctx, mine, tensors if len(mine) else {})
        parts = distributed.gather_objects(ctx, local)
        local = {"seconds": [max(p["seconds"][k] for p in parts) for k in range(len(plan))],
                 "silent": sum(p["silent"] for p in parts),
                 "trace": _summed([p["trace"] for p in parts])}
    return dict(_result(plan, data.labels, tensors["clean_pred"], tensors["code"], local),
                shown=shown, broken=broken, losses=stage_losses(plan, len(data.classes)))


def stage_losses(plan: list[Stage], classes: int) -> dict[str, str]:
    """The loss each APGD stage uses with ``classes`` classes: DLR where it is defined, else
    AutoAttack's fallback (cross-entropy, targeted cross-entropy)."""
    return {s.name: effective_loss(s.attack.loss, classes) for s in plan
            if hasattr(s.attack, "loss")}


Saved = tuple[dict[str, torch.Tensor], dict]  # (tensors, JSON bookkeeping): see _Work


@dataclass
class _Work:
    """Where a cascade stands: each example's code, the next (stage, batch) to run, and what
    has been gathered so far; :meth:`saved` and :meth:`from_saved` carry it across processes."""

    codes: list[torch.Tensor]
    preds: list[torch.Tensor]
    stage: int = 0
    batch: int = 0
    seconds: list[float] = field(default_factory=list)
    silent: int = 0
    traces: list[list[int]] = field(default_factory=list)
    shown: dict[str, list] = field(default_factory=lambda: {
        "position": [], "x_adv": [], "adv_pred": [], "stage": []})
    # every adversarial example found, kept so a later curve of the same weights starts from it
    broken: list[torch.Tensor] = field(default_factory=list)
    broken_x: list[torch.Tensor] = field(default_factory=list)

    def saved(self) -> Saved:
        """The state as tensors and JSON-ready bookkeeping."""
        tensors = {"code": torch.cat(self.codes), "clean_pred": torch.cat(self.preds)}
        if self.shown["x_adv"]:
            tensors["shown_x_adv"] = torch.stack(self.shown["x_adv"])
        if self.broken:
            tensors["broken"], tensors["broken_x"] = torch.cat(self.broken), \
                torch.cat(self.broken_x)
        meta = {"stage": self.stage, "batch": self.batch, "seconds": self.seconds,
                "silent": self.silent, "traces": self.traces,
                "shown": {k: v for k, v in self.shown.items() if k != "x_adv"}}
        return tensors, meta

    @classmethod
    def from_saved(cls, saved: Saved, sizes: list[int]) -> "_Work":
        """The state :meth:`saved` wrote, for batches of ``sizes``."""
        tensors, meta = saved
        shown = dict(meta["shown"], x_adv=list(tensors.get("shown_x_adv", torch.empty(0))))
        broken = [tensors["broken"]] if "broken" in tensors else []
        return cls(list(tensors["code"].split(sizes)), list(tensors["clean_pred"].split(sizes)),
                   meta["stage"], meta["batch"], meta["seconds"], meta["silent"],
                   meta["traces"], shown, broken, [tensors["broken_x"]] if broken else [])


def _run_stages(model: nn.Module, data: TensorData, positions: torch.Tensor, plan: list[Stage],
                batch_size: int, progress: Progress | None,
                on_stage: Callable[[dict], None] | None, keep: int,
                low_precision: bool = False, saved: Saved | None = None,
                on_batch: Callable[[Saved], None] | None = None) -> dict:
    device = next(model.parameters()).device
    search = LowPrecision(model) if low_precision else model
    batches = [positions[s:s + batch_size] for s in range(0, len(positions), batch_size)]
    if saved is not None:
        work = _Work.from_saved(saved, [len(part) for part in batches])
    else:
        preds = [predict_labels(model, data.floats(part).to(device)).cpu() for part in batches]
        work = _Work([torch.where(p == data.labels[part], ROBUST, 0)
                      for p, part in zip(preds, batches)], preds, seconds=[0.0] * len(plan))
    report = _stage_rows(on_stage if batches else None, work, plan)
    report(-1, resumed=saved is not None)
    for k in range(work.stage):
        report(k, resumed=True)
    for k in range(work.stage, len(plan)):
        stage = plan[k]
        for b in range(work.batch if k == work.stage else 0, len(batches)):
            began = time.perf_counter()
            base = k * len(positions) + batch_size * b
            within = _scaled(progress, base, len(batches[b]), len(positions) * len(plan),
                             len(data) * len(plan))
            _attack_batch(model, search, data, batches[b], stage, k, work, b, keep, within)
            work.seconds[k] += time.perf_counter() - began
            work.stage, work.batch = (k, b + 1) if b + 1 < len(batches) else (k + 1, 0)
            if on_batch:
                on_batch(work.saved())
            if work.stage > k:
                report(k)  # after the state that skips it is kept; a resume logs it if missed
            within(1.0)
    empty = torch.empty(0, dtype=torch.long)
    return {"code": torch.cat(work.codes) if work.codes else empty,
            "clean_pred": torch.cat(work.preds) if work.preds else empty,
            "seconds": work.seconds, "silent": work.silent, "trace": _summed(work.traces),
            "shown": work.shown,
            "broken": torch.cat(work.broken) if work.broken else empty,
            "broken_x": torch.cat(work.broken_x) if work.broken_x else
            torch.empty((0, *data.input_shape))}


def _scaled(progress: Progress | None, base: int, size: int, mine: int, whole: int
            ) -> Callable[[float], None]:
    """A batch's progress (a fraction of its ``size`` points, ``base`` points behind it) as
    this rank's share of the whole cascade (``mine`` of ``whole`` points x stages)."""
    if progress is None:
        return lambda _f: None
    return lambda f: progress(round((base + f * size) / mine * whole), whole)


def _stage_rows(on_stage: Callable[[dict], None] | None, work: _Work, plan: list[Stage]
                ) -> Callable[..., None]:
    """A reporter of stage ``k``'s row (-1: clean accuracy) to ``on_stage``; ``resumed`` rows
    were finished before a resume."""

    def report(k: int, resumed: bool = False) -> None:
        if on_stage is None:
            return
        code = torch.cat(work.codes)
        left = (code == ROBUST) | (code > k + 1) if k >= 0 else code != 0  # 0: wrong when clean
        on_stage({"attack": "clean" if k < 0 else plan[k].name,
                  "robust_acc": float(left.float().mean()),
                  "seconds": 0.0 if k < 0 else work.seconds[k], "n": len(code),
                  "resumed": resumed})

    return report


def _attack_batch(model: nn.Module, search: nn.Module, data: TensorData, part: torch.Tensor,
                  stage: Stage, k: int, work: _Work, b: int, keep: int,
                  within: Callable[[float], None]) -> None:
    """Stage ``k`` on batch ``b``'s points still robust; their codes and examples in ``work``;
    ``within`` hears how far the attack's call is."""
    idx = (work.codes[b] == ROBUST).nonzero().squeeze(1)
    if not len(idx):
        return
    device = next(model.parameters()).device
    x = data.floats(part[idx]).to(device)
    y = data.labels[part[idx]].to(device)
    with watching(stage.attack, within):
        adv = stage.attack(search, x, y)
    if stage.name == "apgd-ce":
        work.traces.append(list(stage.attack.trace))
    adv, adv_pred, found = confirmed(stage.attack, model, search, x, y, adv)
    fooled = adv_pred != y.cpu()
    shown = work.shown
    room = keep - sum(s == k for s in shown["stage"])
    for j in fooled.nonzero().squeeze(1)[:max(room, 0)].tolist():
        shown["position"].append(int(part[idx[j]]))
        shown["x_adv"].append(adv[j].cpu())
        shown["adv_pred"].append(int(adv_pred[j]))
        shown["stage"].append(k)
    # Square returns the very point where it saw its lowest margin: a disagreement there is
    # two forwards' rounding at a margin near 0, not a lost success
    if found is not None and stage.name != "square":
        work.silent += int((found & ~fooled).sum())
    work.codes[b][idx[fooled]] = k + 1
    if fooled.any():
        work.broken.append(part[idx[fooled]].clone())
        work.broken_x.append(adv[fooled.to(adv.device)].detach().cpu().float())


def confirmed(attack, model: nn.Module, search: nn.Module, x: torch.Tensor, y: torch.Tensor,
               adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The float32 model's predictions on ``adv`` and the attack's own successes (CPU); where a
    low-precision search saw a success that float32 does not confirm, the point is searched
    again in float32, so rounding neither hides a success nor counts as a silent one."""
    adv_pred = predict_labels(model, adv).cpu().clone()  # an inference tensor is read-only here
    found = getattr(attack, "found_any", None)
    found = None if found is None else found.cpu().clone()
    if search is model or found is None:
        return adv, adv_pred, found
    doubt = (found & (adv_pred == y.cpu())).nonzero().squeeze(1)
    if len(doubt):
        on = doubt.to(x.device)
        again = attack(model, x[on], y[on])
        adv = adv.clone()
        adv[on] = again
        adv_pred[doubt] = predict_labels(model, again).cpu()
        found[doubt] = attack.found_any.cpu()
    return adv, adv_pred, found


def _summed(traces: list[list[int]]) -> list[int]:
    traces = [t for t in traces if t]
    return [sum(column) for column in zip(*traces)] if traces else []


def _result(plan: list[Stage], labels: torch.Tensor, clean: torch.Tensor, code: torch.Tensor,
            extra: dict) -> dict:
    n = len(labels)
    rows = [{"attack": stage.name,
             "robust_acc": float(((code == ROBUST) | (code > k + 1)).float().mean()) if n else 0.0,
             "seconds": extra["seconds"][k]} for k, stage in enumerate(plan)]
    names = ["clean"] + [stage.name for stage in plan]
    return {"n": n, "clean_acc": float((clean == labels).float().mean()) if n else 0.0,
            "robust_acc": float((code == ROBUST).float().mean()) if n else 0.0, "stages": rows,
            "broken_by": [None if c == ROBUST else names[c] for c in code.tolist()],
            "clean_pred": clean.tolist(), "silent": extra["silent"], "trace": extra["trace"]}
