"""Attention kernels: functions of (query, key, value) selected by name, with no parameters of their own.

  'dense'          `dense.dense_attention` (explicit einsum softmax, or cuDNN flash attention on GPUs).
  'block_sparse'   `block_sparse.block_sparse_attention` (SViTT edge sparsity).

Layers (vlm/nn/attention.py) import this package and look kernels up with `get_attention_fn`; the kernels never
import a layer. Importing the package registers both kernels. A new kernel registers itself with
`@register_attention('name')` (vlm/nn/kernels/registry.py) and takes the arguments of `dense.dense_attention`
plus its own keyword options (a layer's `attention_kwargs`).
"""
from vlm.nn.kernels import block_sparse
from vlm.nn.kernels import dense
from vlm.nn.kernels.registry import get_attention_fn
from vlm.nn.kernels.registry import names
from vlm.nn.kernels.registry import register_attention
from vlm.nn.kernels.registry import takes_layer

__all__ = ["block_sparse", "dense", "get_attention_fn", "names", "register_attention", "takes_layer"]
