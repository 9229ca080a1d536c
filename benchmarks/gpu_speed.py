"""RobustLab against what a user would write or pick instead, side by side in one process, on a
GPU (or, with smaller sizes, on the CPU): training images/s of ``fit`` against a plain loop with
the data on the device (batch 128 and 512, float32 and bf16 autocast); PGD-10 against
torchattacks' PGD; the audit (``fast`` on 1,000 images, ``standard`` on 200) against the same
stages from torchattacks (APGD-CE, APGD-T, FAB-T, Square), our search in both arithmetics and
the one ``--precision auto`` picks. Data: an ImageFolder (``DIR/train/<class>/*.png``,
``DIR/test/<class>/*.png``), small enough to travel to a remote GPU (16,000 CIFAR-10 training
PNGs are about 35 MB). torchattacks is a dev-only dependency (``pip install --no-deps
torchattacks==3.5.1``).

    python benchmarks/gpu_speed.py --data DIR [--out FOLDER]          # a GPU: the full sizes
    python benchmarks/gpu_speed.py --data DIR --quick                  # a CPU: small sizes
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common import machine  # noqa: F401  (puts the repository on the path)

FULL = dict(model="preact-resnet18", train_n=15500, epochs=2, batches=(128, 512), at_epochs=4,
            pgd_n=1000, fast_n=1000, standard_n=200, steps=100, queries=5000, audit_batch=500)
QUICK = dict(model="seed-resnet", train_n=2000, epochs=2, batches=(128, 512), at_epochs=2,
             pgd_n=200, fast_n=100, standard_n=40, steps=20, queries=300, audit_batch=100)


class Report:
    """Prints each figure as it comes and keeps them all in ``results.json``."""

    def __init__(self, out: Path | None) -> None:
        self.out, self.rows = out, []

    def add(self, section: str, **row) -> None:
        self.rows.append(dict(section=section, **row))
        print(f"[{section}] " + " · ".join(f"{k} {_fmt(v)}" for k, v in row.items()), flush=True)
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "results.json").write_text(json.dumps(self.rows, indent=1))


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit_images_per_s(spec, device) -> tuple[float, object]:
    """``fit``'s own training epoch (data pipeline, objective, logging points), the second of
    two epochs timed; returns images/s and the trained setup."""
    from core.training import loop

    setup = loop.prepare(spec, device)
    setup.precision = loop.choose_precision(setup)
    ctx = loop.distributed.Context(device=device)
    steps = -(-len(setup.train) // spec.batch_size)
    quiet = loop.Quiet()
    loop._train_epoch(setup, setup.model, 0, steps, steps * 2, ctx, None, None, quiet)
    sync(device)
    began = time.perf_counter()
    loop._train_epoch(setup, setup.model, 1, steps, steps * 2, ctx, None, None, quiet)
    sync(device)
    return len(setup.train) / (time.perf_counter() - began), setup


def plain_images_per_s(spec, device, bf16: bool) -> float:
    """What a user would write: the split's uint8 tensor on the device, crop and flip there,
    one forward, backward and SGD step per batch; the second of two epochs timed."""
    import torch
    import torch.nn.functional as F

    from core import data
    from core.models import build_model

    train = data.load(spec.dataset, "train").subset(spec.train_subset, spec.seed)
    images, labels = train.images.to(device), train.labels.to(device)
    torch.manual_seed(0)
    model = build_model(spec.model, train.input_shape, train.num_classes, train.mean,
                        train.std).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    n, pad = len(images), 4
    h, w = images.shape[2:]
    for epoch in range(2):
        if epoch == 1:
            sync(device)
            began = time.perf_counter()
        order = torch.randperm(n, device=device)
        for start in range(0, n, spec.batch_size):
            idx = order[start:start + spec.batch_size]
            x = F.pad(images[idx], (pad,) * 4)
            b = len(idx)  # a crop and a flip per image, drawn on the device
            dy = torch.randint(0, 2 * pad + 1, (b, 1, 1, 1), device=device)
            dx = torch.randint(0, 2 * pad + 1, (b, 1, 1, 1), device=device)
            rows = dy + torch.arange(h, device=device).view(1, 1, h, 1)
            cols = dx + torch.arange(w, device=device).view(1, 1, 1, w)
            x = x[torch.arange(b, device=device).view(b, 1, 1, 1),
                  torch.arange(x.shape[1], device=device).view(1, -1, 1, 1), rows, cols]
            x = torch.where(torch.rand(b, 1, 1, 1, device=device) < 0.5, x.flip(3), x)
            x = x.float().div_(255).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    sync(device)
    return n / (time.perf_counter() - began)


def training(report: Report, size: dict, folder: str, device) -> None:
    """Section A: fit against the plain loop, both batch sizes and arithmetics."""
    from core.jobs.specs import TrainSpec

    for batch in size["batches"]:
        for precision in ("fp32", "bf16"):
            spec = TrainSpec(dataset=f"imagefolder:{folder}", model=size["model"], epochs=2,
                             batch_size=batch, precision=precision, lr=0.05,
                             optimizer="nesterov", train_subset=size["train_n"],
                             test_subset=200, device=str(device))
            ours, setup = fit_images_per_s(spec, device)
            plain = plain_images_per_s(spec, device, precision == "bf16")
            report.add("train", batch=batch, precision=precision, fit_img_s=ours,
                       plain_img_s=plain, ratio=ours / plain)
        spec = TrainSpec(dataset=f"imagefolder:{folder}", model=size["model"], batch_size=batch,
                         train_subset=size["train_n"], test_subset=200, device=str(device))
        from core.training import loop

        setup = loop.prepare(spec, device)
        report.add("train", batch=batch, auto_picks=loop.choose_precision(setup).reason)


def defended_model(folder: str, size: dict, device):
    """fast-AT at 8/255 (a model with robust points left for every stage of the audit),
    trained through the runner as a user's job is."""
    from core.jobs.runner import create, execute
    from core.jobs.specs import TrainSpec
    from core.jobs.store import RunStore
    from core.prediction import load_model, run_model_path

    spec = TrainSpec(dataset=f"imagefolder:{folder}", model=size["model"],
                     epochs=size["at_epochs"], batch_size=256, lr=0.1, optimizer="nesterov",
                     defense="fast-at", defense_args={"eps": 8 / 255},
                     train_subset=size["train_n"], device=str(device),
                     robust_eval={"n": 200, "steps": 5})
    store = RunStore()
    began = time.perf_counter()
    run_id = create(store, spec)
    summary = execute(store, run_id, echo=False)
    model, _ = load_model(run_model_path(run_id), str(device))
    return model.eval(), summary, time.perf_counter() - began


def pgd(report: Report, model, test, size: dict, device) -> None:
    """Section B: PGD-10 at 8/255 (step 2/255), batches of 500, against torchattacks."""
    import torch
    import torchattacks

    from core.attacks import PGD

    x, y = test.floats()[: size["pgd_n"]].to(device), test.labels[: size["pgd_n"]].to(device)
    ours = PGD(eps=8 / 255, steps=10, step_size=2 / 255, seed=0)
    theirs = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True)
    timings = {}
    for name, run in (("ours", lambda a, b: ours(model, a, b)), ("torchattacks", theirs)):
        run(x[:500], y[:500])  # warm-up
        sync(device)
        began = time.perf_counter()
        advs = [run(x[s:s + 500], y[s:s + 500]) for s in range(0, len(x), 500)]
        sync(device)
        timings[name] = time.perf_counter() - began
        with torch.no_grad():
            acc = float((model(torch.cat(advs)).argmax(1) == y).float().mean())
        report.add("pgd-10", who=name, images=len(x), seconds=timings[name],
                   img_s=len(x) / timings[name], robust_acc=acc)
    report.add("pgd-10", ratio=timings["torchattacks"] / timings["ours"])


def audit(report: Report, model, test, size: dict, device) -> None:
    """Section C: our cascade (bf16 and fp32 search, and what auto picks) against
    torchattacks' stages, each stage on the points still robust."""
    import torch
    from audit_speed import reference_cascade, reference_stages

    from core import audit as audit_
    from core import precision
    from core.threat import ThreatModel

    threat = ThreatModel("linf", 8 / 255)
    batch = size["audit_batch"]
    for version, n in (("fast", size["fast_n"]), ("standard", size["standard_n"])):
        split = test.subset(n, seed=0) if n < len(test) else test
        plan = audit_.stages(version, threat, size["steps"], size["queries"])
        x, y = split.floats().to(device), split.labels.to(device)
        choice = precision.choose("auto", model, x[:batch], y[:batch], "search")
        report.add("audit", version=version, auto_picks=choice.reason)
        ours = {}
        for arithmetic in ("fp32", "bf16"):
            sync(device)
            began = time.perf_counter()
            result = audit_.cascade(model, split, plan, batch, low_precision=arithmetic == "bf16")
            sync(device)
            ours[arithmetic] = (time.perf_counter() - began, result)
            report.add("audit", version=version, who=f"ours ({arithmetic})", images=len(split),
                       seconds=ours[arithmetic][0], robust_acc=result["robust_acc"],
                       stages={r["attack"]: round(r["seconds"], 2) for r in result["stages"]})
        stages = reference_stages(model, version, "linf", 8 / 255, size["steps"], size["queries"])
        began = time.perf_counter()
        rows, ref_acc = reference_cascade(model, x, y, stages, batch)
        sync(device)
        ref_s = time.perf_counter() - began
        report.add("audit", version=version, who="torchattacks", images=len(split),
                   seconds=ref_s, robust_acc=ref_acc, stages={r[0]: round(r[2], 2) for r in rows})
        picked = ours[choice.name]
        report.add("audit", version=version, auto=choice.name, ratio=ref_s / picked[0],
                   ratio_fp32=ref_s / ours["fp32"][0], ratio_bf16=ref_s / ours["bf16"][0],
                   acc_diff_pp=(picked[1]["robust_acc"] - ref_acc) * 100)
        torch.cuda.empty_cache() if device.type == "cuda" else None


def profile_fit(report: Report, folder: str, size: dict, device) -> None:
    """Where ``fit``'s training step spends its host time (batch 128, float32): the top
    operators by self CPU time over 30 steps."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from core.jobs.specs import TrainSpec
    from core.training import loop

    spec = TrainSpec(dataset=f"imagefolder:{folder}", model=size["model"], batch_size=128,
                     precision="fp32", train_subset=128 * 30, test_subset=200, device=str(device))
    setup = loop.prepare(spec, device)
    setup.precision = loop.choose_precision(setup)
    ctx = loop.distributed.Context(device=device)
    loop._train_epoch(setup, setup.model, 0, 30, 60, ctx, None, None, loop.Quiet())
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities) as prof:
        loop._train_epoch(setup, setup.model, 1, 30, 60, ctx, None, None, loop.Quiet())
        sync(device)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    print(table, flush=True)
    report.add("profile", note="top host operators of fit's epoch printed above")
    del torch


def main() -> None:
    """Run the sections in order, printing each figure as it comes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="ImageFolder root with train/ and test/")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--quick", action="store_true", help="the small sizes (for a CPU)")
    parser.add_argument("--sections", default="train,pgd,audit,profile")
    parser.add_argument("--out", default=None, help="folder for results.json")
    args = parser.parse_args()
    os.environ.setdefault("ROBUSTLAB_ARTIFACTS", tempfile.mkdtemp(prefix="robustlab-gpu-"))
    import torch

    from core import data
    from core.prediction import pick_device

    device = pick_device(args.device)
    size = QUICK if args.quick else FULL
    report = Report(Path(args.out) if args.out else None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    report.add("machine", device=name, torch=torch.__version__, python=sys.version.split()[0],
               host=machine())
    folder = str(Path(args.data).resolve())
    sections = args.sections.split(",")
    if "train" in sections:
        training(report, size, folder, device)
    if "profile" in sections:
        profile_fit(report, folder, size, device)
    if {"pgd", "audit"} & set(sections):
        model, summary, seconds = defended_model(folder, size, device)
        report.add("model", defense="fast-at 8/255", epochs=size["at_epochs"],
                   train_seconds=seconds, clean_acc=summary["final"]["test_acc"],
                   held_out_pgd=summary["final"].get("robust_acc"))
        test = data.load(f"imagefolder:{folder}", "test")
        if "pgd" in sections:
            pgd(report, model, test, size, device)
        if "audit" in sections:
            audit(report, model, test, size, device)


if __name__ == "__main__":
    main()
