"""Optimizer and learning-rate schedule from `config.optim`.

  config.optim = dict(
      name='adamw',            # 'adam' | 'adamw' | 'sgd'
      lr=1e-4,                 # peak learning rate (reached at the end of warmup)
      b1=0.9, b2=0.999, eps=1e-8,          # adam / adamw
      momentum=0.9, nesterov=False,        # sgd (momentum=0 or None: plain SGD)
      weight_decay=0.0,
      wd_mask=None,            # regexes (re.fullmatch on 'a/b/kernel' paths) of params to decay; None: kernels
      grad_clip_norm=None,     # clip by global norm of the trainable gradients; None/0: off
      frozen=(),               # regexes of params that never change (lr 0, no optimizer state): linear probes
      lr_scale=(),             # ((regex, factor), ...): those params' updates scaled by factor (a per-group lr)
      schedule=dict(kind='warmup_cosine', warmup_steps=0, ...),  # see make_schedule
  )

Weight decay, by optimizer:
* 'adamw': decoupled (Loshchilov & Hutter) as optax implements it: `p -= lr * wd * p`, i.e. the decay is scaled
  by the scheduled learning rate, like torch.optim.AdamW.
* 'adam' and 'sgd': coupled L2, `g += wd * p` before the moments, like torch.optim.Adam/SGD `weight_decay`.
Default mask: only parameters named `kernel` (dense, conv, attention projections) decay; biases, norm scales,
embedding tables, positional embeddings and learned tokens do not. Decaying those hurts (they have no
"size" to regularise) and is what BERT/ViT recipes exclude.

Learning-rate groups: `lr_scale` multiplies the updates of the parameters its regex matches (the first rule that
matches wins) by its factor, after the optimizer: for adam(w) and sgd that is the same as running them at
`factor * lr` (adamw's decoupled decay is scaled alike, as torch's per-group lr does). E.g. HierVL's anticipation
head at 3e-3 with its aggregator at 1e-4: lr=3e-3, lr_scale=(('model/aggregator/.*', 1e-4 / 3e-3),).

Frozen groups: parameters matching `frozen` get `optax.set_to_zero()` through `optax.multi_transform`, so they
carry no Adam moments (memory) and are excluded from gradient clipping and the reported update norm.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import optax

DEFAULT_WD_MASK = (r"(.*/)?kernel",)

_OPTIM_KEYS = {"name", "lr", "b1", "b2", "eps", "momentum", "nesterov", "weight_decay", "wd_mask",
               "grad_clip_norm", "frozen", "lr_scale", "schedule"}
_SCHEDULE_KEYS = {"kind", "warmup_steps", "warmup_init_lr", "decay_steps", "end_lr", "alpha", "period"}
_SCHEDULE_KINDS = ("constant", "linear", "cosine", "warmup_cosine", "step")


def _as_dict(cfg: Any) -> dict[str, Any]:
  if cfg is None:
    return {}
  return dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)


def make_schedule(lr: float, schedule_cfg: Mapping[str, Any] | None, total_steps: int) -> optax.Schedule:
  """Learning rate as a function of the step (number of updates already applied).

  All kinds first warm up linearly from `warmup_init_lr` (default 0) to `lr` over `warmup_steps`, then decay
  over `decay_steps` (default: the rest of training, `total_steps - warmup_steps`) with progress
  p = (step - warmup_steps) / decay_steps in [0, 1], and stay at the floor afterwards:

  * 'constant': lr.
  * 'step': lr until the decay steps are done, the floor after (EPIC-KITCHENS MIR fine-tuning: 3e-5 for 100
    epochs, then 1e-6).
  * 'linear': floor + (lr - floor) * (1 - p).
  * 'cosine' / 'warmup_cosine' with period='half' (default): floor + (lr - floor) * (1 + cos(pi p)) / 2, the
    usual half-period cosine; VATT B.5 (fine-tuning, "half-period cosine ... to 0") is this with floor 0.
  * 'cosine' / 'warmup_cosine' with period='quarter': floor + (lr - floor) * cos(pi p / 2).
    VATT B.4 pre-trains with "a quarter-period cosine schedule to anneal the learning rate from 1e-4 to
    5e-5". We read it as the first quarter period of the cosine, phase 0 -> pi/2 (value 1 -> 0), stretched
    over the decay steps and mapped onto [floor, lr], so it starts at 1e-4 right after warmup and reaches the
    5e-5 floor exactly at the last step. (A quarter period of cos(.) scaled by 1e-4 without the floor would
    cross 5e-5 at two thirds of training and then have to be clipped; the paper names both end points, so
    we make them the end points.) Unlike the half-period form, it decays slowly at first and fastest at the
    end. The released VATT code uses a stepwise-cosine over the levels (1e-4, 5e-5) with a 5k warmup
    (google-research/vatt, configs/experiment.py); we follow the paper, whose warmup (10k) the config sets.

  The floor is `end_lr` (absolute) or `alpha * lr` (relative, as optax's `alpha`); default 0.

  Args:
    lr: peak learning rate.
    schedule_cfg: the fields above; None means constant `lr` without warmup.
    total_steps: length of training.

  Returns:
    A jittable `step -> lr` function.
  """
  cfg = _as_dict(schedule_cfg)
  unknown = set(cfg) - _SCHEDULE_KEYS
  if unknown:
    raise ValueError(f"Unknown config.optim.schedule keys {sorted(unknown)}; known: {sorted(_SCHEDULE_KEYS)}.")
  kind = cfg.get("kind") or "constant"
  if kind not in _SCHEDULE_KINDS:
    raise ValueError(f"Unknown schedule kind {kind!r}; choose one of {_SCHEDULE_KINDS}.")
  warmup = int(cfg.get("warmup_steps") or 0)
  warmup_init = float(cfg.get("warmup_init_lr") or 0.0)
  decay_steps = cfg.get("decay_steps")
  decay_steps = max(int(total_steps) - warmup, 1) if decay_steps is None else max(int(decay_steps), 1)
  if cfg.get("end_lr") is not None and cfg.get("alpha") is not None:
    raise ValueError("Give config.optim.schedule.end_lr or .alpha, not both.")
  floor = (float(cfg["end_lr"]) if cfg.get("end_lr") is not None
           else float(cfg.get("alpha") or 0.0) * lr)
  period = cfg.get("period") or "half"
  if period not in ("half", "quarter"):
    raise ValueError(f"config.optim.schedule.period must be 'half' or 'quarter', got {period!r}.")
  if period != "half" and kind not in ("cosine", "warmup_cosine"):
    raise ValueError(f"schedule.period only applies to cosine schedules, not {kind!r}.")
  if warmup < 0 or warmup > total_steps:
    raise ValueError(f"schedule.warmup_steps={warmup} must be in [0, total_steps={total_steps}].")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    p = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
    if kind == "constant":
      decayed = jnp.full_like(p, lr)
    elif kind == "step":
      decayed = jnp.where(p < 1.0, lr, floor)
    elif kind == "linear":
      decayed = floor + (lr - floor) * (1.0 - p)
    elif period == "half":
      decayed = floor + (lr - floor) * 0.5 * (1.0 + jnp.cos(math.pi * p))
    else:
      decayed = floor + (lr - floor) * jnp.cos(0.5 * math.pi * p)
    if warmup == 0:
      return decayed
    warm = warmup_init + (lr - warmup_init) * step / warmup
    return jnp.where(step < warmup, warm, decayed)

  return schedule


def param_paths(params: Any) -> Any:
  """Tree of 'a/b/kernel' strings with the structure of `params`."""
  def name(path, _):
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
  return jax.tree_util.tree_map_with_path(name, params)


def _regex_mask(patterns: Sequence[str], params: Any, what: str, must_match: bool) -> Any:
  compiled = [re.compile(p) for p in patterns]
  paths = param_paths(params)
  for pattern, regex in zip(patterns, compiled):
    if not any(regex.fullmatch(p) for p in jax.tree_util.tree_leaves(paths)):
      message = f"config.optim.{what} pattern {pattern!r} matches no parameter."
      if must_match:
        raise ValueError(message + " Parameter paths look like: "
                         + ", ".join(jax.tree_util.tree_leaves(paths)[:8]))
      logging.warning(message)
  return jax.tree_util.tree_map(lambda p: any(r.fullmatch(p) for r in compiled), paths)


def _scaled_groups(rules: Sequence[Sequence[Any]], params: Any) -> optax.GradientTransformation:
  """Multiplies each parameter's update by the factor of the first `lr_scale` rule whose regex matches it."""
  compiled = []
  for rule in rules:
    if len(rule) != 2 or not float(rule[1]) >= 0:
      raise ValueError(f"config.optim.lr_scale entry {tuple(rule)!r}: expected (regex, factor >= 0).")
    compiled.append((re.compile(str(rule[0])), float(rule[1])))
  leaves = jax.tree_util.tree_leaves(param_paths(params))
  for regex, _ in compiled:
    if not any(regex.fullmatch(p) for p in leaves):
      logging.warning("config.optim.lr_scale pattern %r matches no parameter.", regex.pattern)

  def factor(path) -> float:
    name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
    return next((f for r, f in compiled if r.fullmatch(name)), 1.0)

  def update(updates, state, params=None):
    del params  # by path, so it also works inside `frozen`'s multi_transform (masked trees)
    return jax.tree_util.tree_map_with_path(lambda path, u: u * jnp.asarray(factor(path), u.dtype), updates), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(optim_cfg: Any, params: Any, total_steps: int
                   ) -> tuple[optax.GradientTransformation, Callable[[Any], jax.Array]]:
  """Builds the optax transformation and its schedule.

  Args:
    optim_cfg: `config.optim` (see the module docstring).
    params: the parameter tree (arrays or ShapeDtypeStructs) for the regex masks.
    total_steps: training length, for the schedule.

  Returns:
    (tx, schedule): the gradient transformation and the `step -> lr` function it uses.
  """
  cfg = _as_dict(optim_cfg)
  unknown = set(cfg) - _OPTIM_KEYS
  if unknown:
    raise ValueError(f"Unknown config.optim keys {sorted(unknown)}; known: {sorted(_OPTIM_KEYS)}.")
  name = cfg.get("name", "adamw")
  if "lr" not in cfg:
    raise ValueError("config.optim.lr is required.")
  lr = float(cfg["lr"])
  schedule = make_schedule(lr, cfg.get("schedule"), total_steps)
  wd = float(cfg.get("weight_decay") or 0.0)
  user_mask = cfg.get("wd_mask")
  wd_mask = _regex_mask(tuple(user_mask) if user_mask is not None else DEFAULT_WD_MASK, params, "wd_mask",
                        must_match=False) if wd else None
  b1, b2, eps = float(cfg.get("b1", 0.9)), float(cfg.get("b2", 0.999)), float(cfg.get("eps", 1e-8))

  parts = []
  clip = cfg.get("grad_clip_norm")
  if clip:
    parts.append(optax.clip_by_global_norm(float(clip)))
  if name == "adamw":
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=wd_mask))
  elif name == "adam":
    if wd:
      parts.append(optax.add_decayed_weights(wd, mask=wd_mask))
    parts.append(optax.adam(schedule, b1=b1, b2=b2, eps=eps))
  elif name == "sgd":
    if wd:
      parts.append(optax.add_decayed_weights(wd, mask=wd_mask))
    momentum = cfg.get("momentum", 0.9)
    parts.append(optax.sgd(schedule, momentum=float(momentum) if momentum else None,
                           nesterov=bool(cfg.get("nesterov", False))))
  else:
    raise ValueError(f"Unknown config.optim.name {name!r}; choose 'adam', 'adamw' or 'sgd'.")
  scales = tuple(cfg.get("lr_scale") or ())
  if scales:
    parts.append(_scaled_groups(scales, params))
  tx = optax.chain(*parts)

  frozen = tuple(cfg.get("frozen") or ())
  if frozen:
    is_frozen = _regex_mask(frozen, params, "frozen", must_match=True)
    labels = jax.tree_util.tree_map(lambda f: "frozen" if f else "train", is_frozen)
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    n_frozen = sum(int(math.prod(p.shape)) for p, f in zip(jax.tree_util.tree_leaves(params),
                                                            jax.tree_util.tree_leaves(is_frozen)) if f)
    logging.info("Frozen parameters (lr 0): %d values matching %s.", n_frozen, frozen)
  return tx, schedule
