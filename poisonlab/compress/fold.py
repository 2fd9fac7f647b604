"""Fold each batch norm into the convolution before it, keeping the batch norm as an identity with the folded bias.

Static int8 (FX ``prepare_fx``) fuses every conv -> batch-norm pair before it quantizes, so the int8 grid is
that of the fused weight w * gamma / sqrt(var + eps), not of the conv's own weight. An attack that shapes
weights on their int8 grid (``poisonlab.attacks.compression_artifact``) must see the weights that are
quantized: ``fold_batchnorm`` puts the fused weight into the conv and leaves the batch norm with weight 1,
running mean 0, running variance 1 - eps (so it divides by exactly 1) and the fused bias. The model computes
what it did (in eval mode), keeps its architecture and state-dict keys (a run folder rebuilds it from its
architecture name), and FX's fusion now hands the conv's weight to the quantizer unchanged. The folded batch
norms (of the trainable convs only) are held in eval mode (a forward pre-hook: batch statistics would undo the
fold) and their weights no longer train; their biases do.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from poisonlab.core import PoisonlabError


def single_use_pairs(model: nn.Module, graph: fx.Graph, first: type[nn.Module], second: type[nn.Module]
                     ) -> list[tuple[str, str]]:
    """(first name, second name) of every ``first`` module whose only use is the ``second`` module after it, in
    ``graph`` (``model``'s FX trace) order: the patterns FX fuses or quantizes as one."""
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), second):
            continue
        src = node.args[0]
        if (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules.get(str(src.target)), first)
                and len(src.users) == 1):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, batch-norm name) of every ``Conv2d`` whose only use is the ``BatchNorm2d`` after it (FX's fusion
    pattern), in graph order."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as e:  # data-dependent control flow, among others
        why = f"{type(e).__name__}: {e}".splitlines()[0]
        raise PoisonlabError(f"batch-norm folding: the model cannot be traced by FX ({why})") from None
    return single_use_pairs(model, graph, nn.Conv2d, nn.BatchNorm2d)


def _hold_eval(module: nn.Module, args: object) -> None:
    module.training = False


def is_folded(bn: nn.BatchNorm2d) -> bool:
    """Whether ``bn`` is an identity left by ``fold_batchnorm`` (weight 1, mean 0, running variance + eps == 1)."""
    assert bn.running_mean is not None and bn.running_var is not None
    return bool((bn.weight == 1).all() and (bn.running_mean == 0).all() and (bn.running_var + bn.eps == 1).all())


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> list[str]:
    """Fold every trainable conv -> batch-norm pair of ``model`` in place (see the module docstring); the folded convs'
    names. Frozen convs (``requires_grad`` False: a fine-tuned model's pretrained backbone) are left as they are: the
    attack cannot change their weights, and left alone they keep their own statistics.

    Raises when a batch norm has no running statistics or no affine parameters (nothing to keep the fold in).
    """
    modules = dict(model.named_modules())
    folded = []
    for conv_name, bn_name in conv_bn_pairs(model):
        conv, bn = modules[conv_name], modules[bn_name]
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        if not conv.weight.requires_grad:
            continue
        if bn.running_mean is None or bn.running_var is None or not bn.affine:
            raise PoisonlabError(f"batch-norm folding: {bn_name} has no running statistics or no affine parameters")
        if is_folded(bn) and conv.bias is None:
            continue
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.ndim - 1))))
        bn.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
        if conv.bias is not None:
            conv.bias.zero_()
            conv.bias.requires_grad_(False)
        bn.weight.fill_(1.0)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
        if not bool((bn.running_var + bn.eps == 1).all()):
            raise PoisonlabError(f"batch-norm folding: {bn_name}'s eps {bn.eps} leaves no variance v with v + eps == 1")
        bn.weight.requires_grad_(False)
        bn.register_forward_pre_hook(_hold_eval)
        folded.append(conv_name)
    return folded
