"""Sparse video tubes (TubeViT, Piergiovanni et al. 2022; supplement tables 3 and 5, section 2).

A tube is a 3-D convolution kernel (t, h, w) applied with a stride (t, h, w) from an offset (t, h, w) into the
clip, VALID padding: strides larger than the kernel make it *sparse* (it sees part of the clip). Several tubes
of different shapes tokenise the same clip and their tokens are concatenated. Tokens per tube and axis:
floor((L - offset - kernel) / stride) + 1.

Kernel sharing (`shared_kernel=True`, the default; the issue's spec and the public port): ONE learned kernel of
`base_kernel` x 3 x D is trilinearly resized to each tube's shape and every tube adds only its own bias, so the
interpolated larger tubes of section 2 (1x16x16, 16x16x16, 32x8x8, 4x32x32) add no parameters.
`shared_kernel=False` gives each tube its own kernel, which is what table 3's "params" column counts
(kernel volume x d: 512d, 256d, 576d, 256d; the table leaves out the 3 input channels).

Token count: table 3's tubes on 32x224x224 give 98 + 147 + 98 + 196 = 539 tokens; the paper says 559. The first
three tubes have 7x7 spatial grids (49 tokens per temporal step) whatever the padding convention (VALID or SAME
give 7 at stride 32 on 224), and the image tube gives 196; 559 - 196 = 363 is not a multiple of 49, so no choice
of temporal counts, offsets or padding produces 559 with these strides: we read it as an arithmetic slip and
count 539 (plus a CLS token if the model uses one). `tube_token_counts` prints the arithmetic.

S2D (table 3's column: "2x temporal" for 8x8x8, "4x spatial" for 16x4x4). We read it as space-to-depth applied to
the input of that tube: frames (or 2x2 pixel blocks) folded into channels before the convolution, so the 8x8x8
kernel covers 16 frames and the 16x4x4 kernel covers 8x8 pixels at the same parameter count per input channel.
The supplement gives no more detail (which factor per axis, how the shared kernel would be resized across
channel counts), so it is not implemented; interpolated larger kernels (`charades` preset) widen tubes instead.

Images (T = 1) go through the same tokenizer: tubes that do not fit a single frame in time (temporal kernel > 1
or temporal offset > 0) are skipped, and the image is tokenised by the tubes that fit (table 3: 1x16x16).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm.nn import logical as ax

Triple = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Tube:
  """One sparse tube: kernel, stride and offset as (t, h, w), in input frames and pixels."""
  kernel: Triple
  stride: Triple
  offset: Triple = (0, 0, 0)
  name: str = ""

  def __post_init__(self):
    for field in ("kernel", "stride", "offset"):
      value = tuple(int(v) for v in getattr(self, field))
      if len(value) != 3:
        raise ValueError(f"tube {self.label}: {field}={value}; expected three ints (t, h, w).")
      if field != "offset" and min(value) < 1 or field == "offset" and min(value) < 0:
        raise ValueError(f"tube {self.label}: {field}={value} must be {'>= 0' if field == 'offset' else '>= 1'}.")
      object.__setattr__(self, field, value)

  @property
  def label(self) -> str:
    k = "x".join(str(v) for v in self.kernel)
    return self.name or f"{k} stride {tuple(self.stride)} offset {tuple(self.offset)}"

  def grid(self, shape: Sequence[int]) -> Triple | None:
    """Tokens per axis on a (T, H, W) input, or None if the tube does not fit."""
    out = []
    for length, k, s, o in zip(shape, self.kernel, self.stride, self.offset):
      span = int(length) - o - k
      if span < 0:
        return None
      out.append(span // s + 1)
    return tuple(out)

  def centres(self, shape: Sequence[int]) -> np.ndarray:
    """[N, 3] (t, y, x) centre of each token's receptive field: index * stride + offset + (kernel - 1) / 2.

    (kernel - 1) / 2 is the geometric centre in frame / pixel index units (the port uses kernel // 2, half a
    pixel off for even kernels).
    """
    grid = self.grid(shape)
    if grid is None:
      return np.zeros((0, 3), np.float32)
    axes = [np.arange(n) * s + o + (k - 1) / 2 for n, s, o, k in zip(grid, self.stride, self.offset, self.kernel)]
    t, y, x = np.meshgrid(*axes, indexing="ij")
    return np.stack([t.ravel(), y.ravel(), x.ravel()], axis=-1).astype(np.float32)


# Supplement table 3 (the main TubeViT).
TABLE3 = (
    Tube((8, 8, 8), (16, 32, 32), (0, 0, 0)),
    Tube((16, 4, 4), (6, 32, 32), (4, 8, 8)),
    Tube((4, 12, 12), (16, 32, 32), (0, 16, 16)),
    Tube((1, 16, 16), (32, 16, 16), (0, 0, 0)),
)
# Section 2 (Charades): the kernels grown by interpolation, strides and offsets unchanged. The supplement lists
# the shapes without saying which tube each replaces; we pair each with the table 3 tube it extends along the
# axes they share (8x8x8 -> 32x8x8, 16x4x4 -> 16x16x16, 4x12x12 -> 4x32x32, 1x16x16 unchanged). Larger kernels at
# the same strides give fewer VALID positions; the clips are longer (128 frames, table 1), which keeps the
# temporal counts up.
CHARADES = (
    Tube((32, 8, 8), (16, 32, 32), (0, 0, 0)),
    Tube((16, 16, 16), (6, 32, 32), (4, 8, 8)),
    Tube((4, 32, 32), (16, 32, 32), (0, 16, 16)),
    Tube((1, 16, 16), (32, 16, 16), (0, 0, 0)),
)
# Table 5's notation: kernels (a)-(h) and strides (i)-(v); no offsets are given, so they are 0.
TABLE5_KERNELS = {"a": (1, 16, 16), "b": (4, 32, 32), "c": (4, 4, 4), "d": (4, 12, 12), "e": (8, 8, 8),
                  "f": (16, 4, 4), "g": (16, 16, 16), "h": (32, 8, 8)}
TABLE5_STRIDES = {"i": (4, 16, 16), "ii": (8, 8, 8), "iii": (8, 32, 32), "iv": (16, 16, 16), "v": (32, 32, 32)}
PRESETS = {"table3": TABLE3, "charades": CHARADES}


def _triple(text: str, spec: str) -> Triple:
  parts = text.split("x")
  if len(parts) != 3 or not all(p.isdigit() for p in parts):
    raise ValueError(f"tubes={spec!r}: {text!r} is not a 'TxHxW' triple of integers.")
  return tuple(int(p) for p in parts)


def parse_tubes(spec: Any) -> tuple[Tube, ...]:
  """Tubes from a string or a list of Tubes / dicts with kernel, stride and optional offset, name.

  A string is a preset name ('table3', 'charades') or items separated by ',' or ';' (';' inside a config's
  FILE:ARG, whose fields are comma-separated), each either table 5 notation '<kernel a-h>+<stride i-v>'
  ('a+iv;d+v;e+iv;f+v') or explicit 'kernel/stride[/offset]' triples TxHxW ('1x8x8/4x8x8' = single-frame 8x8
  patches from every 4th frame).
  """
  if isinstance(spec, str):
    if spec in PRESETS:
      return PRESETS[spec]
    tubes = []
    for item in spec.replace(" ", "").replace(";", ",").split(","):
      if "/" in item:
        fields = item.split("/")
        if len(fields) not in (2, 3):
          raise ValueError(f"tubes={spec!r}: {item!r} is not 'kernel/stride[/offset]' (e.g. '1x8x8/4x8x8').")
        triples = [_triple(f, spec) for f in fields]
        tubes.append(Tube(*triples, name=item))
        continue
      kernel, _, stride = item.partition("+")
      if kernel not in TABLE5_KERNELS or stride not in TABLE5_STRIDES:
        raise ValueError(f"tubes={spec!r}: {item!r} is not a preset ({sorted(PRESETS)}), table 5 notation "
                         f"'<kernel a-h>+<stride i-v>' (e.g. 'a+iv;d+v;e+iv;f+v') or 'kernel/stride[/offset]' "
                         f"(e.g. '1x8x8/4x8x8').")
      tubes.append(Tube(TABLE5_KERNELS[kernel], TABLE5_STRIDES[stride], name=item))
    return tuple(tubes)
  tubes = []
  for item in spec:
    if isinstance(item, Tube):
      tubes.append(item)
    elif isinstance(item, Mapping) or hasattr(item, "items"):
      item = dict(item)
      unknown = set(item) - {"kernel", "stride", "offset", "name"}
      if unknown or not {"kernel", "stride"} <= set(item):
        raise ValueError(f"tube {item}: expected keys kernel, stride and optionally offset, name.")
      tubes.append(Tube(**item))
    else:
      raise ValueError(f"tube {item!r}: expected a Tube or a dict with kernel, stride, offset.")
  if not tubes:
    raise ValueError("tubes: empty; at least one tube is needed.")
  return tuple(tubes)


def fitting_tubes(tubes: Sequence[Tube], shape: Sequence[int]) -> list[int]:
  """Indices of the tubes used for a (T, H, W) input; raises if a tube does not fit a clip (T > 1).

  Single frames (T = 1) keep only the tubes that fit (images, section 1) and fail only if none does.
  """
  shape = tuple(int(s) for s in shape)
  used = []
  for i, tube in enumerate(tubes):
    if tube.grid(shape) is not None:
      used.append(i)
    elif shape[0] != 1:
      raise ValueError(f"tube {tube.label} does not fit the input (T, H, W) = {shape}: kernel + offset must be "
                       "<= the input along every axis.")
  if not used:
    raise ValueError(f"no tube fits the input (T, H, W) = {shape}; tubes: {[t.label for t in tubes]}.")
  return used


def tube_token_counts(tubes: Sequence[Tube], shape: Sequence[int]) -> dict[str, int]:
  """Tokens per tube on a (T, H, W) input (0 for a tube skipped on a single frame), plus 'total'."""
  used = set(fitting_tubes(tubes, shape))
  out = {t.label: (math.prod(t.grid(shape)) if i in used else 0) for i, t in enumerate(tubes)}
  out["total"] = sum(out.values())
  return out


def resize_kernel(kernel: jax.Array, size: Triple) -> jax.Array:
  """Trilinear resize of a [t, h, w, C, D] kernel to `size` (half-pixel centres, no antialiasing: the port's
  `F.interpolate(mode='trilinear')`)."""
  if tuple(kernel.shape[:3]) == tuple(size):
    return kernel
  return jax.image.resize(kernel, tuple(size) + kernel.shape[3:], method="linear", antialias=False)


class SparseTubeTokenizer(nn.Module):
  """Tokenises a clip with sparse tubes.

  Attributes:
    tubes: the tubes (see `parse_tubes`).
    hidden_size: token width D.
    base_kernel: shape of the shared learned kernel (TubeViT: 8x8x8).
    shared_kernel: one kernel resized to every tube (default) or one kernel per tube (table 3's params).
    dtype: computation dtype.
  """
  tubes: Sequence[Tube]
  hidden_size: int
  base_kernel: Triple = (8, 8, 8)
  shared_kernel: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, video: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    """[B, T, H, W, C] -> (tokens [B, N, D], aux) with aux['centres'] [N, 3] (numpy, (t, y, x) of each token's
    tube centre in input frames / pixels), aux['tube_sizes'] (tokens per tube, 0 if skipped) and aux['used']."""
    if video.ndim != 5:
      raise ValueError(f"video of shape {video.shape}; expected [B, T, H, W, C].")
    shape = video.shape[1:4]
    used = fitting_tubes(self.tubes, shape)
    channels, d = video.shape[-1], self.hidden_size
    init = nn.with_logical_partitioning(nn.initializers.lecun_normal(in_axis=(0, 1, 2, 3), out_axis=4),
                                        (None, None, None, None, ax.EMBED))
    biases = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (None, ax.EMBED)),
                        (len(self.tubes), d), jnp.float32)
    if self.shared_kernel:
      base = self.param("kernel", init, tuple(self.base_kernel) + (channels, d), jnp.float32)
    tokens, centres, sizes = [], [], [0] * len(self.tubes)
    for i in used:
      tube = self.tubes[i]
      kernel = (resize_kernel(base, tube.kernel) if self.shared_kernel else
                self.param(f"kernel_{i}", init, tuple(tube.kernel) + (channels, d), jnp.float32))
      ot, oh, ow = tube.offset
      x = video[:, ot:, oh:, ow:, :].astype(self.dtype)
      y = jax.lax.conv_general_dilated(x, kernel.astype(self.dtype), window_strides=tube.stride, padding="VALID",
                                       dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
      y = y + biases[i].astype(self.dtype)
      sizes[i] = math.prod(y.shape[1:4])
      tokens.append(y.reshape(y.shape[0], -1, d))
      centres.append(tube.centres(shape))
    tokens = jnp.concatenate(tokens, axis=1)
    tokens = nn.with_logical_constraint(tokens, (ax.BATCH, ax.TOKENS, ax.ACT_EMBED))
    return tokens, {"centres": np.concatenate(centres, axis=0), "tube_sizes": sizes, "used": used}
