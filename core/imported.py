"""A model trained anywhere, brought into the lab: its file read without unpickling code, its
architecture built (the lab's, the field's zoo, torchvision's, the user's own function, or the
code a TorchScript / ``torch.export`` archive carries), its input convention wrapped so that
every attack works in [0, 1] pixel space, and the checks it must pass before it is accepted.

Its weights are stored in the run folder as safetensors with a sidecar, like a trained model's,
so every job that takes a model run takes an imported one.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import pickle
import shutil
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from core.attacks.contract import outputs_are_probabilities
from core.models import MODELS, Normalize, build_model
from core.paths import InputError, runs_root
from core.zoo import build_zoo, is_zoo_name

NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "state")
PREFIXES = ("module.", "model.", "net.", "_orig_mod.")
CODE_FILE = "model_code.py"
PROGRAM_FILE = "program.pt"
PROBE = 8  # images of the structural checks


class Adapted(nn.Module):
    """An outside network behind the lab's input convention: pixels in [0, 1] are scaled and
    normalized as the network expects, so every epsilon stays in pixel units."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float],
                 num_classes: int, frozen_mode: bool = False) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        # output j of the lab's model is the dataset's class j: ``order`` picks, for each, the
        # network's output of that class (the identity unless --classes gave another order)
        self.register_buffer("order", torch.arange(num_classes))
        # an exported program keeps the mode it was exported in and refuses eval()/train()
        self.frozen_mode = frozen_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x)).index_select(1, self.order)

    def train(self, mode: bool = True) -> "Adapted":
        """Set the mode of the wrapper and (unless exported) of the network."""
        self.training = mode
        self.normalize.train(mode)
        if not self.frozen_mode:
            self.net.train(mode)
        return self


@dataclass
class Source:
    """What an import file turned out to hold: tensors, or a module with its own code."""

    format: str  # "safetensors", "checkpoint", "torchscript" or "export"
    tensors: dict[str, torch.Tensor] | None = None
    module: nn.Module | None = None


@dataclass
class Examined:
    """A model that passed the checks, with what was said about it on the way."""

    model: Adapted
    lines: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def sha256(path: str | Path) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sniff(path: Path) -> str:
    """The format of ``path`` from its bytes: safetensors, a TorchScript or torch.export
    archive, or a torch.save checkpoint (zip or legacy)."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"  # 8-byte header length, then the JSON header
    if zipfile.is_zipfile(path):
        names = zipfile.ZipFile(path).namelist()
        if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("/archive_format") or "/models/" in n for n in names):
            return "export"
        if any(n.endswith("data.pkl") for n in names):
            return "checkpoint"
    elif head[:2] in (b"\x80\x02", b"\x80\x04", b"\x80\x05"):
        return "checkpoint"  # torch.save's legacy (non-zip) pickle format
    raise InputError(f"{path} is not a model file: expected safetensors, a PyTorch .pt/.pth "
                     "checkpoint, a TorchScript archive or a torch.export program")


def read(path: Path) -> Source:
    """Read an import file without running code it may carry: safetensors directly, a
    checkpoint with ``weights_only=True``, archives with their own loaders."""
    kind = sniff(path)
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return Source(kind, tensors=load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as err:
            raise InputError(f"{path} is not a readable safetensors file: {err}") from err
    if kind == "checkpoint":
        return Source(kind, tensors=_checkpoint_tensors(path))
    try:
        with warnings.catch_warnings():  # torch marks TorchScript deprecated; users still have it
            warnings.simplefilter("ignore", FutureWarning)
            if kind == "torchscript":
                return Source(kind, module=torch.jit.load(str(path), map_location="cpu"))
            return Source(kind, module=torch.export.load(str(path)).module())
    except (RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as err:
        raise InputError(f"{path} looks like a {kind} archive but cannot be loaded: "
                         f"{' '.join(str(err).split())[:300]}") from err


def _checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise InputError(
            f"{path} holds Python objects beyond tensors, which would run code when unpickled, "
            "so it is not loaded (weights_only=True refused it: "
            f"{' '.join(str(err).split()).split('. ')[0][:160]}). Save model.state_dict() "
            "instead, or export it with torch.export") from err
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise InputError(f"{path} is not a readable PyTorch checkpoint: "
                         f"{' '.join(str(err).split())[:200]}") from err
    return state_dict_of(obj, path)


def state_dict_of(obj: Any, path: Path | str = "the file") -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: the object itself, or its nested ``state_dict``,
    ``model``, ``net`` (…) entry; other entries (epoch, optimizer) are ignored."""
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in NESTED_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(torch.is_tensor(v)
                                                         for v in inner.values()):
                return inner
    keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise InputError(f"{path} holds no state_dict: expected tensors by parameter name, or one "
                     f"under {', '.join(NESTED_KEYS)}; found {keys}")


def normalization_buffers(net: nn.Module) -> list[str]:
    """State keys of buffers with which the network normalizes its own input (``mean`` and
    ``std``; BatchNorm's are ``running_mean``/``running_var`` and do not count)."""
    return [k for k, _ in net.named_buffers() if k.split(".")[-1] in ("mean", "std")]


def _strip(state: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The state with each common wrapper prefix removed in turn (DataParallel's ``module.``,
    a wrapper's ``model.``, ``torch.compile``'s ``_orig_mod.``)."""
    out = [state]
    while True:
        cur = out[-1]
        prefix = next((p for p in PREFIXES if cur and all(k.startswith(p) for k in cur)), None)
        if prefix is None:
            return out
        out.append({k[len(prefix):]: v for k, v in cur.items()})


def fit_state(net: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """``state`` renamed to fit ``net`` (prefixes dropped), with missing ``num_batches_tracked``
    and normalization buffers taken from the network; refuses with every missing, unexpected
    or misshapen key named. Returns the state and the names of the keys it filled."""
    expected = net.state_dict()
    best = max(_strip(state), key=lambda s: len(expected.keys() & s.keys()))
    fillable = set(normalization_buffers(net)) | {k for k in expected
                                                  if k.endswith("num_batches_tracked")}
    missing = sorted(expected.keys() - best.keys())
    filled = [k for k in missing if k in fillable]
    missing = [k for k in missing if k not in fillable]
    unexpected = sorted(best.keys() - expected.keys())
    wrong = [f"{k} {tuple(best[k].shape)} (the architecture has {tuple(v.shape)})"
             for k, v in expected.items() if k in best and best[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing: {', '.join(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected: {', '.join(unexpected)}" if unexpected else "",
                 f"{len(wrong)} of another shape: {'; '.join(wrong)}" if wrong else ""]
        raise InputError("the weights do not fit the architecture (" +
                         "; ".join(p for p in parts if p) + ")")
    state = dict(best)
    for k in filled:
        state[k] = expected[k]
    return state, filled


def _user_function(spec: str, num_classes: int) -> nn.Module:
    """Run the user's ``PATH.py:FUNCTION`` and return the module it builds."""
    path, _, name = spec.rpartition(":")
    loader = importlib.util.spec_from_file_location(f"robustlab_user_{sha256(path)[:12]}", path)
    if loader is None or loader.loader is None:
        raise InputError(f"--module {spec}: {path} cannot be imported as Python code")
    module = importlib.util.module_from_spec(loader)
    try:
        loader.loader.exec_module(module)
    except Exception as err:  # the user's code: any error is theirs to see, in one line
        raise InputError(f"--module {spec}: running {path} failed: "
                         f"{type(err).__name__}: {err}") from err
    fn = getattr(module, name, None)
    if not callable(fn):
        raise InputError(f"--module {spec}: {path} defines no function {name!r}")
    params = inspect.signature(fn).parameters
    kwargs = {"num_classes": num_classes} if "num_classes" in params else {}
    try:
        net = fn(**kwargs)
    except Exception as err:  # the user's code, as above
        raise InputError(f"--module {spec}: {name}() failed: {type(err).__name__}: {err}") from err
    if not isinstance(net, nn.Module):
        raise InputError(f"--module {spec}: {name}() returned {type(net).__name__}, not an "
                         "nn.Module")
    return net


def torchvision_names() -> list[str]:
    """torchvision's classification models, by their ``torchvision.models`` names."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_arch(arch: str, input_shape: Sequence[int], num_classes: int,
               mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """A randomly initialized network by name: the lab's own, the field's zoo, or
    torchvision's (``resnet18`` or ``torchvision:resnet18``)."""
    if arch in MODELS:
        return build_model(arch, input_shape, num_classes, mean, std)
    if is_zoo_name(arch):
        return build_zoo(arch, num_classes, input_shape[0])
    name = arch.removeprefix("torchvision:")
    if name in torchvision_names():
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    raise InputError(f"unknown architecture {arch!r}; valid: the lab's {', '.join(MODELS)}; the "
                     "zoo's wrn-D-W, dm-wrn-D-W, rb-preact-resnet18; or a torchvision.models "
                     "classification model such as resnet18, vgg11, mobilenet_v2 (all: "
                     "python -c 'import torchvision; print(torchvision.models.list_models())')")


def program_file(run_id: str, name: str) -> Path:
    """A file an imported model keeps in its run folder (its code or its program)."""
    return runs_root() / run_id / name


def rebuild(tensors: dict[str, torch.Tensor], meta: dict) -> Adapted:
    """The stored imported model from its tensors and sidecar (on the CPU, eval mode)."""
    from core import checkpoint

    info = meta["import"]
    shape, k = meta["input_shape"], meta["num_classes"]
    if info["format"] in ("torchscript", "export"):
        net = read(program_file(info["run"], PROGRAM_FILE)).module
    elif info.get("module"):
        code = program_file(info["run"], CODE_FILE)
        net = _user_function(f"{code}:{info['module'].rpartition(':')[2]}", k)
    else:
        net = build_arch(info["arch"], shape, k, meta.get("arch_mean", [0.5]),
                         meta.get("arch_std", [0.5]))
    model = Adapted(net, [0.0] * shape[0], [1.0] * shape[0], k, info["format"] == "export")
    model.fold_batchnorm = info["format"] not in ("torchscript", "export")
    checkpoint.load_into(model, tensors)
    return model.eval()


def _net_and_state(spec, source: Source, shape: Sequence[int], k: int, stats: tuple
                   ) -> tuple[nn.Module, list[str], dict]:
    """The network of ``spec`` with its weights loaded; what was filled; sidecar facts."""
    if source.module is not None:
        if spec.arch or spec.module:
            raise InputError(f"{spec.file} is a {source.format} archive, which carries its own "
                             "code: drop --arch/--module")
        return source.module, [], {}
    if not (spec.arch or spec.module):
        raise InputError(f"{spec.file} holds weights only ({source.format}); name the "
                         "architecture with --arch NAME or --module PATH.py:FUNCTION")
    if spec.module:
        net, facts = _user_function(spec.module, k), {}
    else:
        mean = spec.mean or stats[0]
        std = spec.std or stats[1]
        net = build_arch(spec.arch, shape, k, mean, std)
        facts = {"arch_mean": list(mean), "arch_std": list(std)}
    own = normalization_buffers(net)
    state, filled = fit_state(net, source.tensors)
    given = [b for b in own if b not in filled]
    if given and spec.mean:
        raise InputError(f"the checkpoint normalizes its own input ({', '.join(given)}): "
                         "--mean/--std would normalize twice; drop them")
    net.load_state_dict(state)
    if spec.mean and own:
        for name in own:  # the missing buffers take the user's values, not the defaults
            buf = net.get_buffer(name)
            value = spec.mean if name.endswith("mean") else spec.std
            buf.copy_(torch.tensor(value, dtype=buf.dtype).view(buf.shape) if len(value) ==
                      buf.numel() else torch.full_like(buf, value[0]))
    return net, filled, facts


def _per_channel(values: Sequence[float], channels: int) -> list[float]:
    if len(values) not in (1, channels):
        raise InputError(f"--mean/--std take 1 or {channels} values (one per channel), got "
                         f"{len(values)}")
    return list(values) * (channels if len(values) == 1 else 1)


def _order(spec, classes: list[str]) -> list[int]:
    """For each dataset class, the network's output of that class (from --classes)."""
    if not spec.classes:
        return list(range(len(classes)))
    if len(spec.classes) != len(classes):
        raise InputError(f"--classes names {len(spec.classes)} classes but the dataset has "
                         f"{len(classes)}: {', '.join(classes)}")
    unknown = [c for c in spec.classes if c not in classes]
    if unknown or len(set(spec.classes)) != len(classes):
        raise InputError(f"--classes must name each of the dataset's classes once "
                         f"({', '.join(classes)}); unknown or repeated: "
                         f"{', '.join(unknown) or 'a repeated name'}")
    return [spec.classes.index(c) for c in classes]


def examine(spec, split) -> Examined:
    """Read, build and wrap the model ``spec`` names, then check it on ``split``'s first
    images: the output shape and finiteness, two eval-mode forwards agreeing, no dependence on
    the rest of the batch, probabilities flagged, a gradient reaching the input. Raises
    InputError (one line) when it must be refused."""
    path = Path(spec.file)
    source = read(path)
    shape, classes = list(split.input_shape), list(split.classes)
    k = len(classes)
    net, filled, facts = _net_and_state(spec, source, shape, k, (split.mean, split.std))
    lines = [f"read {path.name}: {source.format}" + (
        f", {len(source.tensors):,} tensors" if source.tensors is not None else ", its own code")]
    if filled:
        lines.append(f"filled from the architecture (absent from the checkpoint): "
                     f"{', '.join(filled)}")
    spec_mean = None if (source.module is None and normalization_buffers(net)) else spec.mean
    mean = _per_channel(spec_mean, shape[0]) if spec_mean else [0.0] * shape[0]
    std = _per_channel(spec.std, shape[0]) if spec_mean else [1.0] * shape[0]
    scale = float(spec.input_scale)
    model = Adapted(net, [m / scale for m in mean], [s / scale for s in std], k,
                    frozen_mode=source.format == "export")
    model.fold_batchnorm = source.format not in ("torchscript", "export")
    model.order.copy_(torch.tensor(_order(spec, classes)))
    model.eval()
    flags = _check(model, split, k, spec.allow_random, lines)
    meta = dict(facts, input_scale=spec.input_scale, user_mean=spec.mean, user_std=spec.std,
                filled=filled, flags=flags, format=source.format)
    return Examined(model, lines, flags, meta)


def _check(model: Adapted, split, k: int, allow_random: bool, lines: list[str]) -> list[str]:
    x = split.floats(slice(0, PROBE))
    try:
        with torch.no_grad():
            raw = model.net(model.normalize(x))  # before the class order picks its outputs
            if not torch.is_tensor(raw) or raw.ndim != 2 or raw.shape[1] != k:
                shape = tuple(raw.shape) if torch.is_tensor(raw) else type(raw).__name__
                raise InputError(
                    f"the model's output has shape {shape}; expected ({PROBE}, {k}): one logit "
                    f"per class of the dataset ({', '.join(split.classes)}); build it with "
                    f"num_classes={k}")
            out, again = model(x), model(x)
            part = model(x[:PROBE // 2])
    except InputError:
        raise
    except Exception as err:  # anything the outside model raises is the refusal's reason
        raise InputError(f"the model failed on a batch of shape {tuple(x.shape)} (pixels in "
                         f"[0, 1] after --input-scale/--mean/--std): {type(err).__name__}: "
                         f"{' '.join(str(err).split())[:300]}") from err
    if not torch.isfinite(out).all():
        raise InputError("the model's output holds NaN or infinite values on test images")
    lines.append(f"output: ({PROBE}, {k}) finite logits on test images")
    flags = []
    gap = (out - again).abs().max().item()
    if gap > 1e-4 * max(1.0, out.abs().max().item()):
        if not allow_random:
            raise InputError(
                f"two eval-mode forwards of the same images differ (by up to {gap:.3g}): the "
                "model is randomized (dropout left on, noise, random transforms), and attacks "
                "need a deterministic model (the audit's randomness indicator). Fix the model, "
                "or pass --allow-random to import it flagged")
        flags.append("randomized")
        lines.append(f"flagged: randomized, two forwards differ by up to {gap:.3g}")
    else:
        lines.append("deterministic: two eval-mode forwards agree")
    if not flags and (part - out[:PROBE // 2]).abs().max().item() > \
            1e-3 * max(1.0, out.abs().max().item()):
        raise InputError("an image's output depends on the other images of its batch "
                         "(BatchNorm in training mode?): export or save the model in eval mode")
    if outputs_are_probabilities(out):
        flags.append("probabilities")
        lines.append("flagged: the outputs are probabilities (rows sum to 1); gradients "
                     "through a softmax vanish and hide adversarial examples, so robust "
                     "accuracy will be overstated: import the logits instead")
    xg = x.clone().requires_grad_(True)
    try:
        grad = torch.autograd.grad(model(xg).logsumexp(1).sum(), xg, allow_unused=True)[0]
    except RuntimeError:
        grad = None
    if grad is None or not grad.abs().sum().item() > 0:
        flags.append("no-gradient")
        lines.append("flagged: no gradient reaches the input; gradient attacks will fail "
                     "(the standard audit's Square needs none)")
    return flags


def near_chance(accuracy: float, high: float, k: int) -> bool:
    """Whether a clean accuracy (with the top of its 95% interval) is near chance 1/k."""
    return high < 2.0 / k or accuracy < 1.5 / k


def chance_line(accuracy: float, k: int) -> str:
    """What a near-chance clean accuracy most likely means."""
    return (f"warning: clean accuracy {accuracy:.1%} is near chance ({1 / k:.0%}): the likely "
            "causes are the normalization (--mean/--std), the class order (--classes) and the "
            "input scale (--input-scale 1 or 255)")


def keep_files(spec, folder: Path, source_format: str) -> None:
    """Copy what rebuilds the network into the run folder: the user's code file or the
    archive (temporary file, then rename)."""
    names = []
    if source_format in ("torchscript", "export"):
        names.append((Path(spec.file), PROGRAM_FILE))
    elif spec.module:
        names.append((Path(spec.module.rpartition(":")[0]), CODE_FILE))
    folder.mkdir(parents=True, exist_ok=True)
    for src, name in names:
        tmp = folder / (name + ".tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(folder / name)

