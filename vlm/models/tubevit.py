"""TubeViT: a ViT over sparse video tubes (Piergiovanni et al. 2022; supplement tables 2 and 3).

video [B, T, H, W, 3] -> SparseTubeTokenizer (vlm/nn/tubes.py) -> + fixed 3-D sin-cos embedding at each token's
tube centre (vlm/nn/posemb.py `sincos_3d`) -> [CLS] -> pre-norm ViT encoder (vlm/nn/transformer.py) -> pooled
feature [B, D]. Images are clips with T = 1: only the tubes that fit a single frame tokenise them (section 1),
and the same weights serve both.

Sizes (table 2): B 12 layers / 768 / MLP 3072 / 12 heads (86M), L 24 / 1024 / 4096 / 16 (307M), H 32 / 1280 /
5120 / 16 (632M), and 'tiny' 2 / 64 / 128 / 2 for CPU runs. Our counts (tests/test_models_tubevit.py, table 3's
shared 8x8x8 kernel, CLS token, no head): B 86.24M, L 303.89M, H 631.65M against 86M, 307M, 632M; table 2
counts the image ViTs with their 16x16 patch embedding and learned position table, which a fixed sin-cos
embedding does not have (ViT-B/16: +0.15M positions, a 1000-way head +0.77M).

Pooling: 'cls' (the standard ViT the paper builds on; the CLS token gets a zero position embedding) or 'gap'
(mean of the tube tokens). For image-ViT parity and checkpoints, `posemb='learned'` adds a ViT-style learned
table over [CLS] + tokens (vlm/models/vit_checkpoints.py).

Construction: `Model.from_config(config)` (and `build_backbone`, the classification task's entry) reads
config.model, whose keys are the fields of `Model` below (an unknown key is an error naming it): name 'tubevit';
variant 'B' | 'L' | 'H' | 'tiny' (SIZES); tubes, base_kernel, shared_kernel, posemb, pool, dropout_rate,
attention_dropout_rate, layer_norm_epsilon, remat, scan, attention, dtype. Nothing is derived from config.input:
the tubes tokenise clips of any length and size.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm.models import common
from vlm.nn import dropout as dropout_lib
from vlm.nn import logical as ax
from vlm.nn import posemb as posemb_lib
from vlm.nn import transformer
from vlm.nn import tubes as tubes_lib


def _size(num_layers: int, hidden_size: int, mlp_dim: int, num_heads: int) -> dict[str, int]:
  return dict(num_layers=num_layers, hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=num_heads)


# `config.model.variant` -> Model fields: table 2's ViT sizes, and 'tiny' (ours) for CPU runs.
SIZES = {"B": _size(12, 768, 3072, 12), "L": _size(24, 1024, 4096, 16), "H": _size(32, 1280, 5120, 16),
         "tiny": _size(2, 64, 128, 2)}
TABLE2_PARAMS = {"B": 86e6, "L": 307e6, "H": 632e6}


class Model(nn.Module):
  """TubeViT backbone: video [B, T, H, W, 3] -> (features [B, D], aux). Defaults: TubeViT-B with table 3's tubes.

  Attributes:
    num_layers, hidden_size, mlp_dim, num_heads: the ViT (table 2; `variant` in a config picks a row of SIZES).
    tubes: 'table3' | 'charades' | table 5 notation | a sequence of tubes (vlm/nn/tubes.py `parse_tubes`).
    base_kernel: the shared kernel every tube's kernel is interpolated from (8, 8, 8; table 3).
    shared_kernel: one kernel for all tubes (True, table 3) or one per tube.
    posemb: 'sincos' (fixed 3-D, at the tube centres) or 'learned' (a ViT-style table, for image checkpoints).
    pool: 'cls' or 'gap'.
    dropout_rate, attention_dropout_rate: 0 (table 1: no dropout for Kinetics).
    layer_norm_epsilon: 1e-6 (big_vision ViT; HF ViT checkpoints: 1e-12).
    remat, scan, attention, dtype: Transformer options (dtype: computation dtype, e.g. 'bfloat16' in a config).
  """
  num_layers: int = 12
  hidden_size: int = 768
  mlp_dim: int = 3072
  num_heads: int = 12
  tubes: Any = "table3"
  base_kernel: tuple[int, int, int] = (8, 8, 8)
  shared_kernel: bool = True
  posemb: str = "sincos"
  pool: str = "cls"
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-6
  remat: bool = False
  scan: bool = False
  attention: str = "dense"
  dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Model":
    """The backbone of config.model (see the module docstring).

    Raises:
      ValueError: naming an unknown variant or config.model key, before anything is built.
    """
    kwargs = common.model_kwargs(cls, config.model, sizes=SIZES, family="tubevit", patch_field=None)
    if "tubes" in kwargs:
      kwargs["tubes"] = _tube_spec(kwargs["tubes"])
    return cls(**kwargs)

  def token_counts(self, shape) -> dict[str, int]:
    """Tokens per tube on a (T, H, W) input (vlm/nn/tubes.py), for the inspect tool."""
    return tubes_lib.tube_token_counts(tubes_lib.parse_tubes(self.tubes), shape)

  @nn.compact
  def __call__(self, video: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    if self.posemb not in ("sincos", "learned"):
      raise ValueError(f"posemb={self.posemb!r}; expected 'sincos' or 'learned'.")
    if self.pool not in ("cls", "gap"):
      raise ValueError(f"pool={self.pool!r}; expected 'cls' or 'gap'.")
    d = self.hidden_size
    x, aux = tubes_lib.SparseTubeTokenizer(tubes_lib.parse_tubes(self.tubes), d, tuple(self.base_kernel),
                                           self.shared_kernel, dtype=self.dtype, name="tubes")(video)
    b = x.shape[0]
    if self.pool == "cls":
      cls = self.param("cls", nn.with_logical_partitioning(nn.initializers.zeros, (None, None, ax.EMBED)),
                       (1, 1, d), jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)
    if self.posemb == "sincos":
      table = posemb_lib.sincos_3d(aux["centres"], d)
      if self.pool == "cls":  # the CLS token has no position: zero embedding
        table = jnp.concatenate([jnp.zeros((1, d), table.dtype), table], axis=0)
      x = x + jnp.asarray(table, x.dtype)[None]
    else:
      table = self.param("pos_embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                       (None, None, ax.EMBED)),
                         (1, x.shape[1], d), jnp.float32)
      x = x + table.astype(x.dtype)
    x = dropout_lib.Dropout(self.dropout_rate)(x, deterministic=not train)
    x, enc_aux = transformer.Encoder(
        num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
        attention=self.attention, layer_norm_epsilon=self.layer_norm_epsilon, remat=self.remat,
        scan=self.scan, dtype=self.dtype, name="encoder")(x, train=train)
    features = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
    return features, {**aux, "tokens": x, **enc_aux}


def build_backbone(config: ml_collections.ConfigDict) -> Model:
  """The classification backbone (vlm/tasks/classification.py): `Model.from_config`."""
  return Model.from_config(config)


def _tube_spec(spec: Any) -> Any:
  """A tube spec as a hashable flax field: a string as it is, a sequence of tubes as a tuple of Tubes."""
  if isinstance(spec, str):
    return spec
  return tuple(tubes_lib.parse_tubes([dict(item) if hasattr(item, "items") else item for item in spec]))


def load(params: dict[str, Any], restored: dict[str, Any] | None, init: Any, model: Any) -> dict[str, Any]:
  """TubeViT's part of `config.init` (vlm/train/init.py): an image-ViT weights file.

  `config.init.path` a big_vision / vision_transformer .npz or an HF ViT .safetensors: the Transformer, the
  [CLS] token and the final norm load into the backbone, the image patch kernel is inflated to every tube kernel
  (vlm/models/vit_checkpoints.py); heads and anything else keep their fresh values. A checkpoint directory
  (`restored`) loads as it is (renames go in config.init.assignment_map).
  """
  import os  # pylint: disable=g-import-not-at-top
  from vlm.models import vit_checkpoints  # pylint: disable=g-import-not-at-top
  del model
  path = init.get("path")
  if restored is not None or not path or not os.path.isfile(path):
    return dict(restored or {})
  prefix = "backbone/" if any(k.startswith("backbone/") for k in params) else ""
  if not any(k.startswith(prefix + "tubes/") for k in params):
    raise ValueError(f"config.init.path={path!r} is an image-ViT file; only backbones with sparse tubes load it.")
  import flax  # pylint: disable=g-import-not-at-top
  backbone = flax.traverse_util.unflatten_dict(
      {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}, sep="/")
  backbone = vit_checkpoints.init_backbone(vit_checkpoints.read_vit(path), backbone)
  loaded = {prefix + k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(backbone, sep="/").items()}
  return {**params, **loaded}
