"""Preprocessing mini-language: op registry, builder, seeds, and the general (label / key / batch) ops.

A pp spec is a `|`-separated string of op calls (big_vision style) or an equivalent list:

  'sample_clip(32, fps=10)|random_resized_crop(224)|flip|color_jitter|normalize(-1, 1)|keep("video", "label")'
  ['sample_clip(32, fps=10)', ('random_resized_crop', {'size': 224}), 'flip', ...]

Each op name maps to a registered *factory*; calling the factory with the op's arguments returns a
`dict -> dict` function on tf tensors that works eagerly and inside `tf.data` (the tests run both). Arguments are
Python literals (parsed with `ast.literal_eval`). Ops live in `ops_video`, `ops_audio`, `ops_text` and here;
extra modules are imported by name (`modules=` / `config.input.pp_modules`) and register with `@register`.

Randomness. Every random op is stateless: it draws from `data['_seed']` (int64 [2]), which the pipeline derives
per example from (config.seed, host, epoch, position). The builder folds the op's index into the seed before
calling op i, so ops draw independent streams and the same example gets the same augmentation on every run and
after a restart. An op used alone without `_seed` falls back to a nondeterministic seed.

Batch-level ops (`mixup`) run on batched dicts (`config.input.batch_pp`) and draw from a [2] batch seed.
"""
from __future__ import annotations

import ast
import functools
import importlib
import inspect
from typing import Any, Callable, Iterable, Mapping, Sequence

import tensorflow as tf

Features = dict[str, Any]
Op = Callable[[Features], Features]

SEED_KEY = "_seed"
_REGISTRY: dict[str, Callable[..., Op]] = {}
_BUILTIN_MODULES = ("vlm.data.ops_video", "vlm.data.ops_audio", "vlm.data.ops_text")


def register(name: str | None = None) -> Callable[[Callable[..., Op]], Callable[..., Op]]:
  """Decorator registering an op factory under `name` (default: the function name)."""

  def deco(factory):
    key = name or factory.__name__
    if key in _REGISTRY and _REGISTRY[key].__module__ != factory.__module__:
      raise ValueError(f"pp op {key!r} registered twice ({_REGISTRY[key].__module__}, {factory.__module__}).")
    _REGISTRY[key] = factory
    return factory

  return deco


def _import_modules(modules: Iterable[str] = ()) -> None:
  for m in (*_BUILTIN_MODULES, *modules):
    importlib.import_module(m)


def get_op(name: str) -> Callable[..., Op]:
  _import_modules()
  if name not in _REGISTRY:
    raise KeyError(f"Unknown pp op {name!r}. Known: {', '.join(sorted(_REGISTRY))}.")
  return _REGISTRY[name]


def registered_ops() -> list[str]:
  _import_modules()
  return sorted(_REGISTRY)


# ----------------------------------------------------------------------------------------------------------------
# Parsing and building.


def parse_op(spec: str | tuple | Mapping) -> tuple[str, tuple, dict]:
  """One op spec -> (name, args, kwargs). Accepts 'name', 'name(1, k=2)', (name, kwargs) or {'name':..., ...}."""
  if isinstance(spec, Mapping):
    spec = dict(spec)
    return spec.pop("name"), tuple(spec.pop("args", ())), spec
  if isinstance(spec, (tuple, list)):
    name, *rest = spec
    kwargs = dict(rest[0]) if rest else {}
    return name, (), kwargs
  text = spec.strip()
  try:
    node = ast.parse(text, mode="eval").body
  except SyntaxError as e:
    raise ValueError(f"pp op {text!r} is not a valid call: {e}") from None
  if isinstance(node, ast.Name):
    return node.id, (), {}
  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
    try:
      args = tuple(ast.literal_eval(a) for a in node.args)
      kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except ValueError:
      raise ValueError(f"pp op {text!r}: arguments must be Python literals.") from None
    return node.func.id, args, kwargs
  raise ValueError(f"pp op {text!r} must look like name or name(args).")


def split_spec(pp: str | Sequence | None) -> list:
  """A pp string or list -> list of op specs (empty parts dropped)."""
  if pp is None:
    return []
  if isinstance(pp, str):
    # Split on '|' outside brackets and quotes, so string arguments may contain '|'.
    parts, depth, quote, cur = [], 0, None, []
    for ch in pp:
      if quote:
        quote = None if ch == quote else quote
      elif ch in "'\"":
        quote = ch
      elif ch in "([{":
        depth += 1
      elif ch in ")]}":
        depth -= 1
      elif ch == "|" and depth == 0:
        parts.append("".join(cur))
        cur = []
        continue
      cur.append(ch)
    parts.append("".join(cur))
    return [p for p in (q.strip() for q in parts) if p]
  return list(pp)


def _instantiate(name: str, args: tuple, kwargs: dict, defaults: Mapping[str, Mapping[str, Any]]) -> Op:
  factory = get_op(name)
  extra = dict(defaults.get(name, {}))
  if extra:
    sig = inspect.signature(factory)
    try:
      bound = sig.bind_partial(*args, **kwargs)
    except TypeError as e:
      raise TypeError(f"pp op {name}: {e}") from None
    accepts_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    for k, v in extra.items():
      if k not in bound.arguments and (k in sig.parameters or accepts_kw):
        kwargs = {**kwargs, k: v}
  try:
    return factory(*args, **kwargs)
  except TypeError as e:
    raise TypeError(f"pp op {name}{args or ''}{kwargs or ''}: {e}") from None


def build(pp: str | Sequence | None, *, defaults: Mapping[str, Mapping[str, Any]] | None = None,
          modules: Iterable[str] = ()) -> Op:
  """Builds one `dict -> dict` function from a pp spec.

  Args:
    pp: the spec (string or list, see the module docstring); None or '' gives the identity.
    defaults: per-op default keyword arguments filled in when the spec does not give them, e.g.
      `{'tokenize': {'tokenizer': tok, 'max_len': 16}}` (how the pipeline injects config fields).
    modules: extra modules to import for their `@register`ed ops.

  Returns:
    The composed function. If the input has `_seed`, op i sees `_seed` folded with i, and the output keeps
    the input's `_seed` unless an op removed it (`keep`).
  """
  _import_modules(modules)
  defaults = defaults or {}
  ops = []
  for spec in split_spec(pp):
    name, args, kwargs = parse_op(spec)
    ops.append((name, _instantiate(name, args, kwargs, defaults)))

  def fn(data: Features) -> Features:
    data = dict(data)
    base = data.get(SEED_KEY)
    for i, (_, op) in enumerate(ops):
      if base is not None:
        # Set even when an earlier op (keep) dropped it, so later random ops stay deterministic.
        data[SEED_KEY] = tf.random.experimental.stateless_fold_in(base, i)
      data = op(data)
    if base is not None and SEED_KEY in data:
      data[SEED_KEY] = base
    return data

  # Ops use explicit tf.cond / tf.switch_case, so AutoGraph has nothing to convert; skipping it makes building
  # tf.data pipelines noticeably faster.
  fn = tf.autograph.experimental.do_not_convert(fn)
  fn.ops = [n for n, _ in ops]
  return fn


# ----------------------------------------------------------------------------------------------------------------
# Helpers for op authors.


def get_seed(data: Features, num: int | None = None) -> tf.Tensor:
  """The op's stateless seed: int64 [2], or [num, 2] independent seeds when `num` is given."""
  seed = data.get(SEED_KEY)
  if seed is None:
    # Used alone (no pipeline): fall back to a fresh seed; the pipeline always provides one.
    seed = tf.random.uniform([2], minval=-2**62, maxval=2**62, dtype=tf.int64)
  seed = tf.cast(seed, tf.int64)
  if num is None:
    return seed
  return tf.random.experimental.stateless_split(seed, num)


def uniform(seed: tf.Tensor, shape=(), minval=0.0, maxval=1.0, dtype=tf.float32) -> tf.Tensor:
  return tf.random.stateless_uniform(shape, seed=seed, minval=minval, maxval=maxval, dtype=dtype)


def bernoulli(seed: tf.Tensor, prob: float) -> tf.Tensor:
  """Scalar bool, True with probability `prob`."""
  return uniform(seed) < prob


def in_key_out_key(inkey: str, outkey: str | None = None):
  """Decorator for factories whose op maps one value: adds `inkey=` / `outkey=` keyword arguments.

  The decorated factory returns a function `value -> value`; the wrapper applies it to `data[inkey]` and stores
  the result in `data[outkey]` (outkey defaults to inkey). The inner function may take a second argument, the
  data dict, when it needs the seed or other keys.
  """

  def deco(factory):

    @functools.wraps(factory)
    def wrapped(*args, inkey: str = inkey, outkey: str | None = outkey, **kwargs):
      inner = factory(*args, **kwargs)
      takes_data = len(inspect.signature(inner).parameters) >= 2
      out = outkey or inkey

      def op(data: Features) -> Features:
        data = dict(data)
        if inkey not in data:
          raise KeyError(f"pp op {factory.__name__}: key {inkey!r} not in the example (keys: {sorted(data)}).")
        data[out] = inner(data[inkey], data) if takes_data else inner(data[inkey])
        return data

      return op

    wrapped.__signature__ = _merged_signature(factory, inkey, outkey)
    return wrapped

  return deco


def _merged_signature(factory, inkey, outkey) -> inspect.Signature:
  sig = inspect.signature(factory)
  params = [p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
  params += [inspect.Parameter("inkey", inspect.Parameter.KEYWORD_ONLY, default=inkey),
             inspect.Parameter("outkey", inspect.Parameter.KEYWORD_ONLY, default=outkey)]
  return sig.replace(parameters=params)


# ----------------------------------------------------------------------------------------------------------------
# General ops: keys and labels.


@register()
def keep(*keys: str) -> Op:
  """Keeps only `keys` (missing ones are ignored; the pipeline re-adds its private `_` keys)."""
  return lambda data: {k: v for k, v in data.items() if k in keys}


@register()
def drop(*keys: str) -> Op:
  """Removes `keys` if present."""
  return lambda data: {k: v for k, v in data.items() if k not in keys}


@register()
def copy(inkey: str, outkey: str) -> Op:
  """data[outkey] = data[inkey]."""
  return lambda data: {**data, outkey: data[inkey]}


@register()
def rename(**new_to_old: str) -> Op:
  """rename(text="captions"): moves data["captions"] to data["text"]."""

  def op(data):
    data = dict(data)
    for new, old in new_to_old.items():
      data[new] = data.pop(old)
    return data

  return op


@register()
def first(*keys: str, default: float = -1) -> Op:
  """Each of `keys`, a 1-D tensor (an `extra_context` key such as 'event/start_frame'), -> its first element, a
  scalar (`default` when it is empty): eval batches need static shapes."""

  def op(data):
    data = dict(data)
    for key in keys:
      x = tf.reshape(data[key], [-1])
      data[key] = tf.cond(tf.size(x) > 0, lambda x=x: x[0], lambda x=x: tf.cast(default, x.dtype))
    return data

  return op


@register()
@in_key_out_key("label_index", "label")
def label(default: int = -1, num_classes: int = 0, dataset: str = ""):
  """First class index: int32 [M] -> int32 [] (`default` when the record has no label).

  With `num_classes` > 0 a label outside [0, num_classes) is an error naming the label, the range and `dataset`
  (the first records are checked eagerly before training, so a wrong class count fails at once; a stray bad
  record later is counted and skipped like any corrupt record).
  """

  def fn(x):
    x = tf.reshape(tf.cast(x, tf.int32), [-1])
    y = tf.cond(tf.size(x) > 0, lambda: x[0], lambda: tf.constant(default, tf.int32))
    if num_classes > 0:
      ok = tf.logical_and(y >= 0, y < num_classes)
      with tf.control_dependencies([tf.debugging.Assert(ok, [
          f"label outside the class range [0, {num_classes}) of dataset {dataset or '?'}: label =", y])]):
        y = tf.identity(y)
    return y

  return fn


@register()
@in_key_out_key("label_index", "labels")
def onehot(num_classes: int, smoothing: float = 0.0, on: float = 1.0, off: float = 0.0):
  """First class index -> float32 [C] one-hot (label smoothing: on = 1 - s + s/C, off = s/C).

  Accepts a scalar or an int [M] label (first entry used); a missing label gives all `off`.
  """
  if smoothing:
    on, off = 1.0 - smoothing + smoothing / num_classes, smoothing / num_classes

  def fn(x):
    x = tf.reshape(tf.cast(x, tf.int32), [-1])[:1]
    hot = tf.reduce_sum(tf.one_hot(x, num_classes, on_value=on - off, off_value=0.0), axis=0)
    return hot + off

  return fn


@register()
@in_key_out_key("label_index", "labels")
def multihot(num_classes: int, smoothing: float = 0.0):
  """All class indices int [M] -> float32 [C] multi-hot (values capped at 1; out-of-range indices ignored)."""

  def fn(x):
    x = tf.reshape(tf.cast(x, tf.int32), [-1])
    hot = tf.minimum(tf.reduce_sum(tf.one_hot(x, num_classes), axis=0), 1.0)
    if smoothing:
      hot = hot * (1.0 - smoothing) + smoothing / num_classes
    return hot

  return fn


# ----------------------------------------------------------------------------------------------------------------
# Batch-level ops (run on batched dicts, config.input.batch_pp).


def sample_beta(seed: tf.Tensor, alpha: float, beta: float, shape=()) -> tf.Tensor:
  """Stateless Beta(alpha, beta) via two gammas."""
  s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  g1 = tf.random.stateless_gamma(shape, s1, alpha)
  g2 = tf.random.stateless_gamma(shape, s2, beta)
  return g1 / (g1 + g2)


@register()
def mixup(alpha: float = 5.0, keys: Sequence[str] = ("video", "audio"), label_keys: Sequence[str] = ("labels",),
          per_example: bool = False) -> Op:
  """Mixup on a batch: x = lam * x + (1 - lam) * x[rolled], the same lam for inputs and labels.

  Pairs each example with its neighbour (`tf.roll` by one along the batch). lam ~ Beta(alpha, alpha), one per
  batch (default) or one per example. VATT B.6 uses Beta(5, 5). Keys absent from the batch are skipped; the mixed
  weight is stored as `mixup_lam` float32 [B].

  Args:
    alpha: Beta concentration.
    keys: input keys to mix (float arrays with a leading batch axis).
    label_keys: target keys to mix (e.g. one-hot `labels` [B, C]).
    per_example: draw one lam per example instead of one per batch.
  """

  def op(batch):
    batch = dict(batch)
    ref = next((batch[k] for k in (*keys, *label_keys) if k in batch), None)
    if ref is None:
      raise KeyError(f"mixup: none of {list(keys) + list(label_keys)} in the batch.")
    b = tf.shape(ref)[0]
    seed = get_seed(batch)
    lam = sample_beta(seed, alpha, alpha, [b] if per_example else [])
    lam_b = lam if per_example else tf.fill([b], lam)
    for k in (*keys, *label_keys):
      if k in batch:
        x = tf.convert_to_tensor(batch[k])
        w = tf.reshape(lam_b, [-1] + [1] * (x.shape.rank - 1))
        batch[k] = w * x + (1.0 - w) * tf.roll(x, 1, axis=0)
    batch["mixup_lam"] = lam_b
    return batch

  return op
