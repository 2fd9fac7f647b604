"""Image-scaling attacks and defenses (Quiring et al., USENIX Security 2020; DLS 2020): the preprocess stage."""

from poisonlab.scaling.craft import Crafted, craft_attack, craft_region, craft_weak, psnr, solve_planes
from poisonlab.scaling.operator import ScalingOperator, operator_for, recover_operator, verify_operator
from poisonlab.scaling.resize import RESIZERS, Resizer, get_resizer, parse_size

__all__ = ["RESIZERS", "Crafted", "Resizer", "ScalingOperator", "craft_attack", "craft_region", "craft_weak",
           "get_resizer", "operator_for", "parse_size", "psnr", "recover_operator", "solve_planes", "verify_operator"]
