"""The arguments of one case that every command line takes alike (`python -m sim`, `python -m
comet.core.planner`): model and its overrides, EP x TP, tokens, routing and hardware; and the model and routing
they name. One place, so that the command lines' help texts and defaults cannot drift apart."""

from __future__ import annotations

import argparse

from comet.core import defaults
from comet.core.config import HARDWARE, MODELS, HardwareProfile, ModelConfig, profile_files
from comet.core.routing import ROUTINGS, Routing, make_routing


def hardware_arg(text: str) -> str:
    """argparse type of every --hw: the name (or .json path) as given, once HardwareProfile.from_name loads it,
    so a wrong one stops the command line at once with the known names instead of a traceback later (in a worker
    process, for the sweeps). SystemExit, not ArgumentTypeError: one line, without argparse's usage block."""
    try:
        HardwareProfile.from_name(text)
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    return text


def add_case_arguments(group, tokens: int) -> None:
    """--model --ep --tp --tokens (default `tokens`) --topk --experts --routing --std --seed --hw on `group` (an
    ArgumentParser or one of its groups)."""
    group.add_argument("--model", default="mixtral-8x7b", help=f"one of {', '.join(MODELS)}")
    group.add_argument("--ep", type=int, default=8, help="expert-parallel degree (a divisor of the model's E)")
    group.add_argument("--tp", type=int, default=1,
                       help="tensor-parallel degree (a divisor of the model's K; ranks = ep x tp)")
    group.add_argument("--tokens", type=int, default=tokens, help="M, tokens in the layer over the whole group (>= 1)")
    group.add_argument("--topk", type=int, default=argparse.SUPPRESS,
                       help="override the model's topk (default: the model's)")
    group.add_argument("--experts", type=int, default=argparse.SUPPRESS,
                       help="override the model's expert count E (default: the model's)")
    group.add_argument("--routing", default="balanced", choices=ROUTINGS,
                       help="seeded synthetic routing: equal loads, uniform picks, or load shares with std --std")
    group.add_argument("--std", type=float, default=0.032, help="expert load-share std for --routing imbalanced")
    group.add_argument("--seed", type=int, default=0, help="routing seed")
    group.add_argument("--hw", default=defaults.SIM_HARDWARE, type=hardware_arg,
                       help=f"hardware profile: one of {', '.join(HARDWARE)}, a measured one of profiles/ "
                            f"({', '.join(profile_files()) or 'none'}) or a .json file")


def case_model(a: argparse.Namespace) -> ModelConfig:
    """The registered model --model names, with the --topk / --experts overrides given."""
    overrides = {k: getattr(a, n) for k, n in (("topk", "topk"), ("experts_E", "experts"))
                 if getattr(a, n, None) is not None}
    return ModelConfig.from_name(a.model, **overrides)


def case_routing(a: argparse.Namespace, model: ModelConfig) -> Routing:
    """The seeded routing --routing / --tokens / --std / --seed name, for `model`."""
    return make_routing(a.routing, a.tokens, model.experts_E, model.topk, seed=a.seed, std=a.std)
