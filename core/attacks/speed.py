"""How attacks run fast: BatchNorm folded into the convolutions for eval-mode attacks, and
a bfloat16 search whose verdicts are still the float32 model's."""
from __future__ import annotations

import weakref

import torch
import torch.nn as nn


class _Folded:
    """A model's graph traced once with every Conv2d -> BatchNorm2d pair replaced by one
    convolution whose weights are refolded only when the original weights or running statistics
    change (exact in eval mode). The other layers are the model's own modules, shared."""

    def __init__(self, model: nn.Module) -> None:
        from torch.fx import symbolic_trace

        module = symbolic_trace(model)
        found = dict(module.named_modules())
        self.pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d, nn.Conv2d]] = []
        for node in list(module.graph.nodes):
            conv_node = node.args[0] if node.op == "call_module" and node.args else None
            bn = found.get(node.target) if node.op == "call_module" else None
            if not (isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None
                    and getattr(conv_node, "op", None) == "call_module"
                    and isinstance(found.get(conv_node.target), nn.Conv2d)
                    and len(conv_node.users) == 1):
                continue
            conv = found[conv_node.target]
            # skip_init: an initialization would draw from the global RNG, so the first attack
            # on a model would change every random number drawn after it (a training's crops)
            fused = nn.utils.skip_init(nn.Conv2d, conv.in_channels, conv.out_channels,
                                       conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                                       conv.groups, bias=True, padding_mode=conv.padding_mode,
                                       device=conv.weight.device)
            fused.requires_grad_(False)
            name = f"folded_{len(self.pairs)}"
            module.add_submodule(name, fused.to(memory_format=torch.channels_last))
            conv_node.target = name
            node.replace_all_uses_with(conv_node)
            module.graph.erase_node(node)
            self.pairs.append((conv, bn, fused))
        module.graph.lint()
        module.recompile()
        self.module = module
        self.stamp: tuple = ()

    def refresh(self) -> nn.Module:
        """Refold the pairs whose weights or statistics changed since the last call."""
        from torch.nn.utils.fusion import fuse_conv_bn_weights

        # a train-mode forward updates the running statistics without bumping their version
        # counters; it does bump num_batches_tracked's
        stamp = tuple((t._version, t.data_ptr()) for conv, bn, _ in self.pairs
                      for t in (conv.weight, bn.weight, bn.bias, bn.running_mean,
                                bn.running_var, bn.num_batches_tracked) if t is not None)
        if stamp != self.stamp:
            with torch.no_grad():
                for conv, bn, fused in self.pairs:
                    w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean,
                                                bn.running_var, bn.eps, bn.weight, bn.bias)
                    fused.weight.copy_(w)
                    fused.bias.copy_(b)
            self.stamp = stamp
        return self.module


_FOLDED: "weakref.WeakKeyDictionary[nn.Module, _Folded | None]" = weakref.WeakKeyDictionary()


def folded(model: nn.Module) -> nn.Module:
    """The model with BatchNorm folded into its convolutions, for attacking in eval mode.
    Small convolutions are bound by memory traffic, so the BatchNorm passes are a large share
    of every attack step. The graph is traced once per model; later calls only refold the
    weights when an optimizer step or a BatchNorm update changed them. Models torch.fx cannot
    trace are used as they are."""
    if model not in _FOLDED:
        from torch.fx.proxy import TraceError

        entry = None
        # wrappers that fold their model themselves (or must not be folded) say so
        if (getattr(model, "fold_batchnorm", True)
                and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())):
            try:
                entry = _Folded(model)
            except (TraceError, TypeError, RuntimeError, NotImplementedError, AttributeError):
                entry = None  # dynamic control flow: attack the model as it is
        _FOLDED[model] = entry
    entry = _FOLDED[model]
    return model if entry is None else entry.refresh()


class LowPrecision(nn.Module):
    """The model's folded forward under bfloat16 autocast, its logits returned in float32: an
    attack's search runs 2.5-3x faster where the hardware has bfloat16 arithmetic (CPUs with
    AVX-512 BF16 or AMX, recent GPUs). Rows whose top two logits are too close for bf16 to
    order are computed in float32. Gradients still reach the input in float32. Whoever
    searches with it takes every verdict with the float32 model (the audit does, and
    searches again in float32 wherever the two disagree)."""

    fold_batchnorm = False  # it folds its model itself, inside autocast

    def __init__(self, model: nn.Module, near: float = 0.04) -> None:
        super().__init__()
        self.model = model
        # bf16 rounds the logits by about 1% of their scale, so where the top two are within
        # ``near`` of that scale the predicted class is a coin toss: those rows are computed
        # again in float32, and the search decides at the boundary as the verdict will
        self.near = near
        # a new module starts in train mode: the attack contract restores the wrapper's
        # mode, which must be its model's, or an attack would leave the model training
        self.training = model.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # no cast cache: it would hold every iterate's bf16 copy until the attack ends
        net = folded(self.model)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=False):
            logits = net(x).float()
        top = logits.detach().topk(2, dim=1).values
        close = (top[:, 0] - top[:, 1]) <= self.near * logits.detach().abs().amax(1).clamp_min(1)
        if not close.any():
            return logits
        logits = logits.clone()
        logits[close] = net(x[close])
        return logits


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively (elsewhere it is emulated, and slow)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
