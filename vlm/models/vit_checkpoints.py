"""Image ViT checkpoints into TubeViT (and any backbone built on vlm.nn.transformer.Encoder).

TubeViT starts from an image ViT (supplement section 1). Two on-disk layouts are read from local files:

* big_vision / google-research vision_transformer `.npz`: flat keys joined by '/', e.g.
  `Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel` [D, H, K], `embedding/kernel`
  [P, P, 3, D], `cls` [1, 1, D], the position table at `Transformer/posembed_input/pos_embedding` (vision_transformer)
  or `pos_embedding` (big_vision), optionally under a `params/` prefix, with per-layer blocks `encoderblock_<i>` or
  one scanned `encoderblock` whose arrays carry a leading layer axis. Inside a block the first LayerNorm is the
  attention's, the second the MLP's, whatever their suffixes (vision_transformer: `LayerNorm_0`, `LayerNorm_2`;
  big_vision: `LayerNorm_0`, `LayerNorm_1`).
* HF transformers `.safetensors` (`ViTModel` / `ViTForImageClassification.save_pretrained`): torch Linear weights
  [out, in], `embeddings.patch_embeddings.projection.weight` [D, 3, P, P], optionally under a `vit.` prefix.

`read_vit(path)` turns either into one neutral `ViTWeights` (our Encoder's names and shapes); `init_backbone`
writes it into a freshly initialised TubeViT parameter tree:

* the 2-D patch kernel [P, P, 3, D] is inflated to the tube kernel [t, h, w, 3, D]: resized bilinearly to h x w
  and scaled by P*P / (h*w) (a constant image gives the same response at any size), then repeated over t and
  divided by t (I3D-style inflation: a static clip gives the image response). With the shared kernel (table 3) the
  base kernel is inflated and the tokenizer resizes it per tube as in training; with per-tube kernels each is
  inflated to its own shape; the patch bias goes to every tube's bias;
* the position table is used when the model has a learned one of the same shape (an image model with a 1 x P x P
  tube: exact parity with the checkpoint); a sin-cos model ignores it;
* any other name or shape mismatch is an error naming the parameter.

The test (tests/test_models_vit_checkpoints.py) saves a randomly initialised HF `ViTModel`, loads it here and
matches HF's hidden states on images, and round-trips the same weights through the big_vision npz layout.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vlm.models import hf_weights


@dataclasses.dataclass
class ViTWeights:
  """An image ViT in our names: `layers[i]` maps Encoder block paths ('attention/query/kernel', ...) to arrays."""
  patch_kernel: np.ndarray  # [P, P, 3, D]
  patch_bias: np.ndarray  # [D]
  cls: np.ndarray | None  # [1, 1, D]
  pos_embedding: np.ndarray | None  # [1, N (+1 with CLS), D]
  layers: list[dict[str, np.ndarray]]
  encoder_norm: dict[str, np.ndarray]  # {'scale', 'bias'}

  @property
  def hidden_size(self) -> int:
    return int(self.patch_kernel.shape[-1])


def detect_layout(flat: dict[str, Any]) -> str | None:
  """'hf', 'big_vision' or None (not an image ViT this module knows)."""
  if any(".encoder.layer." in f".{k}" for k in flat):
    return "hf"
  if any(re.search(r"(^|/)Transformer/encoderblock", k) for k in flat):
    return "big_vision"
  return None


def read_vit(path_or_flat: str | dict[str, Any], num_heads: int | None = None) -> ViTWeights:
  """A ViT checkpoint file (or its flat dict) as `ViTWeights`; `num_heads` only matters for HF weights."""
  path = path_or_flat if isinstance(path_or_flat, str) else None
  flat = hf_weights.read_weights(path) if path else dict(path_or_flat)
  layout = detect_layout(flat)
  if layout == "hf":
    return _from_hf(flat, num_heads or _hf_num_heads(path, _hf_width(flat)))
  if layout == "big_vision":
    return _from_big_vision(flat)
  raise ValueError("Not an image-ViT checkpoint: expected HF keys ('encoder.layer.<i>...') or big_vision / "
                   f"vision_transformer keys ('Transformer/encoderblock...'); found e.g. {sorted(flat)[:5]}.")


def _take(flat: dict[str, Any], key: str) -> np.ndarray:
  return hf_weights.take(flat, key, "ViT checkpoint")


def _hf_width(flat: dict[str, Any]) -> int:
  return int(_take(hf_weights.strip_prefix(flat, "vit."), "embeddings.patch_embeddings.projection.weight").shape[0])


def _from_hf(flat: dict[str, Any], heads: int) -> ViTWeights:
  flat = hf_weights.strip_prefix(flat, "vit.")
  d = _hf_width(flat)
  num_layers = 1 + max(int(m.group(1)) for k in flat if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
  layers = []
  for i in range(num_layers):
    p = f"encoder.layer.{i}."
    linear = lambda name: (_take(flat, p + name + ".weight").T, _take(flat, p + name + ".bias"))  # [in, out]
    layer = {}
    for ours, theirs in (("query", "query"), ("key", "key"), ("value", "value")):
      w, b = linear(f"attention.attention.{theirs}")
      layer[f"attention/{ours}/kernel"] = w.reshape(d, heads, -1)
      layer[f"attention/{ours}/bias"] = b.reshape(heads, -1)
    w, b = linear("attention.output.dense")
    layer["attention/out/kernel"] = w.reshape(heads, -1, d)
    layer["attention/out/bias"] = b
    layer["mlp/wi/kernel"], layer["mlp/wi/bias"] = linear("intermediate.dense")
    layer["mlp/wo/kernel"], layer["mlp/wo/bias"] = linear("output.dense")
    for ours, theirs in (("ln_attention", "layernorm_before"), ("ln_mlp", "layernorm_after")):
      layer[f"{ours}/scale"] = _take(flat, f"{p}{theirs}.weight")
      layer[f"{ours}/bias"] = _take(flat, f"{p}{theirs}.bias")
    layers.append(layer)
  return ViTWeights(
      patch_kernel=_take(flat, "embeddings.patch_embeddings.projection.weight").transpose(2, 3, 1, 0),
      patch_bias=_take(flat, "embeddings.patch_embeddings.projection.bias"),
      cls=_take(flat, "embeddings.cls_token") if "embeddings.cls_token" in flat else None,
      pos_embedding=(_take(flat, "embeddings.position_embeddings") if "embeddings.position_embeddings" in flat
                     else None),
      layers=layers,
      encoder_norm={"scale": _take(flat, "layernorm.weight"), "bias": _take(flat, "layernorm.bias")})


def _hf_num_heads(path: str | None, d: int) -> int:
  """HF fuses the heads in its Linear layers: the count comes from the config.json saved beside the weights, else
  from the ViT convention of 64 features per head."""
  config = hf_weights.hf_config(path)
  if config is not None:
    return int(config["num_attention_heads"])
  if d % 64:
    raise ValueError(f"Cannot infer the head count of a width-{d} HF ViT: pass num_heads, or keep the "
                     "config.json that save_pretrained writes beside the weights.")
  return d // 64


def _from_big_vision(flat: dict[str, Any]) -> ViTWeights:
  for prefix in ("params/", "opt/target/"):
    if any(k.startswith(prefix) for k in flat):
      flat = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
  blocks: dict[int, dict[str, np.ndarray]] = {}
  scanned = any(k.startswith("Transformer/encoderblock/") for k in flat)
  for k, v in flat.items():
    m = re.match(r"Transformer/encoderblock(?:_(\d+))?/(.+)$", k)
    if not m:
      continue
    if scanned:
      for i in range(np.shape(v)[0]):
        blocks.setdefault(i, {})[m.group(2)] = np.asarray(v[i], np.float32)
    else:
      blocks.setdefault(int(m.group(1)), {})[m.group(2)] = np.asarray(v, np.float32)
  layers = []
  for i in range(len(blocks)):
    if i not in blocks:
      raise KeyError(f"ViT checkpoint lacks Transformer/encoderblock_{i}.")
    b = blocks[i]
    norms = sorted({k.split("/")[0] for k in b if k.startswith("LayerNorm_")}, key=lambda s: int(s.split("_")[1]))
    attn = next((k.split("/")[0] for k in b if k.startswith("MultiHeadDotProductAttention")), None)
    mlp = next((k.split("/")[0] for k in b if k.startswith("MlpBlock")), None)
    if len(norms) != 2 or attn is None or mlp is None:
      raise KeyError(f"Transformer/encoderblock_{i}: expected two LayerNorms, an attention and an MLP block; "
                     f"found {sorted({k.split('/')[0] for k in b})}.")
    layer = {}
    for ours, theirs in zip(("ln_attention", "ln_mlp"), norms):
      layer[f"{ours}/scale"], layer[f"{ours}/bias"] = b[f"{theirs}/scale"], b[f"{theirs}/bias"]
    for proj in ("query", "key", "value", "out"):
      layer[f"attention/{proj}/kernel"] = b[f"{attn}/{proj}/kernel"]
      layer[f"attention/{proj}/bias"] = b[f"{attn}/{proj}/bias"]
    for ours, theirs in (("wi", "Dense_0"), ("wo", "Dense_1")):
      layer[f"mlp/{ours}/kernel"], layer[f"mlp/{ours}/bias"] = b[f"{mlp}/{theirs}/kernel"], b[f"{mlp}/{theirs}/bias"]
    layers.append(layer)
  pos_key = next((k for k in ("Transformer/posembed_input/pos_embedding", "pos_embedding") if k in flat), None)
  return ViTWeights(
      patch_kernel=_take(flat, "embedding/kernel"), patch_bias=_take(flat, "embedding/bias"),
      cls=_take(flat, "cls") if "cls" in flat else None,
      pos_embedding=_take(flat, pos_key) if pos_key else None,
      layers=layers,
      encoder_norm={"scale": _take(flat, "Transformer/encoder_norm/scale"),
                    "bias": _take(flat, "Transformer/encoder_norm/bias")})


def to_big_vision_npz(vit: ViTWeights, path: str) -> None:
  """Writes `vit` in the vision_transformer .npz layout (for tests and for exporting our image ViTs)."""
  flat = {"embedding/kernel": vit.patch_kernel, "embedding/bias": vit.patch_bias,
          "Transformer/encoder_norm/scale": vit.encoder_norm["scale"],
          "Transformer/encoder_norm/bias": vit.encoder_norm["bias"]}
  if vit.cls is not None:
    flat["cls"] = vit.cls
  if vit.pos_embedding is not None:
    flat["Transformer/posembed_input/pos_embedding"] = vit.pos_embedding
  names = {"ln_attention": "LayerNorm_0", "ln_mlp": "LayerNorm_2", "attention": "MultiHeadDotProductAttention_1",
           "mlp/wi": "MlpBlock_3/Dense_0", "mlp/wo": "MlpBlock_3/Dense_1"}
  for i, layer in enumerate(vit.layers):
    for path_, value in layer.items():
      module, leaf = path_.rsplit("/", 1)
      head = module.split("/")[0] if module.startswith(("attention", "ln_")) else module
      theirs = names[head] + module[len(head):]
      flat[f"Transformer/encoderblock_{i}/{theirs}/{leaf}"] = value
  np.savez(path, **flat)


def inflate_patch_kernel(kernel: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
  """[P, P, C, D] 2-D patch kernel -> [t, h, w, C, D] tube kernel (module docstring)."""
  t, h, w = shape
  p_h, p_w = kernel.shape[:2]
  k = np.asarray(kernel, np.float32)
  if (h, w) != (p_h, p_w):
    k = np.asarray(jax.image.resize(jnp.asarray(k), (h, w) + k.shape[2:], method="linear", antialias=False))
    k = k * (p_h * p_w) / (h * w)
  return np.repeat(k[None] / t, t, axis=0)


def init_backbone(vit: ViTWeights, params: dict[str, Any]) -> dict[str, Any]:
  """TubeViT backbone params (`params`: the freshly initialised tree, plain arrays) with `vit` written in."""
  out = jax.tree.map(np.asarray, params)
  tubes = out["tubes"]

  def put(tree: dict[str, Any], path: str, value: np.ndarray, what: str) -> None:
    *parents, leaf = path.split("/")
    node = tree
    for name in parents:
      if name not in node:
        raise KeyError(f"{what}: the model has no {path!r}.")
      node = node[name]
    if leaf not in node:
      raise KeyError(f"{what}: the model has no {path!r}.")
    if np.shape(node[leaf]) != np.shape(value):
      raise ValueError(f"{what} has shape {np.shape(value)}; the model's {path} has {np.shape(node[leaf])}.")
    node[leaf] = np.asarray(value, np.float32)

  kernels = [k for k in tubes if k == "kernel" or k.startswith("kernel_")]
  for name in kernels:
    tubes[name] = inflate_patch_kernel(vit.patch_kernel, tuple(np.shape(tubes[name])[:3]))
    if tubes[name].shape[3:] != np.shape(params["tubes"][name])[3:]:
      raise ValueError(f"ViT patch kernel has channels x width {vit.patch_kernel.shape[2:]}; the model's "
                       f"tubes/{name} has {np.shape(params['tubes'][name])[3:]}.")
  put(out, "tubes/bias", np.broadcast_to(vit.patch_bias, np.shape(tubes["bias"])), "ViT patch bias")
  if "cls" in out:
    if vit.cls is None:
      raise KeyError("The model has a CLS token and the ViT checkpoint has none.")
    put(out, "cls", vit.cls, "ViT cls")
  if "pos_embedding" in out and vit.pos_embedding is not None:
    table = vit.pos_embedding
    if "cls" not in out and table.shape[1] == out["pos_embedding"].shape[1] + 1:
      table = table[:, 1:]  # a pooled (GAP) model: the CLS position is dropped
    put(out, "pos_embedding", table, "ViT position table")
  encoder = out["encoder"]
  scanned = "encoderblock" in encoder
  num_layers = (np.shape(encoder["encoderblock"]["ln_mlp"]["scale"])[0] if scanned
                else sum(k.startswith("encoderblock_") for k in encoder))
  if num_layers != len(vit.layers):
    raise ValueError(f"ViT checkpoint has {len(vit.layers)} layers; the model has {num_layers}.")
  for path, _ in vit.layers[0].items():
    if scanned:
      stacked = np.stack([layer[path] for layer in vit.layers])
      put(encoder, f"encoderblock/{path}", stacked, f"ViT layers' {path}")
    else:
      for i, layer in enumerate(vit.layers):
        put(encoder, f"encoderblock_{i:02d}/{path}", layer[path], f"ViT layer {i} {path}")
  put(encoder, "encoder_norm/scale", vit.encoder_norm["scale"], "ViT encoder_norm scale")
  put(encoder, "encoder_norm/bias", vit.encoder_norm["bias"], "ViT encoder_norm bias")
  return out
