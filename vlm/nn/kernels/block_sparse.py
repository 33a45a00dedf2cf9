"""Block-sparse attention (SViTT edge sparsity, supplement equations 1-3), gather-based with static shapes.

The sequence is `num_global` global tokens (e.g. [CLS]) followed by N local tokens. The local tokens are cut into
nblk = ceil(N / G) blocks of G tokens; each query block attends to

  * every global token,
  * K_l local blocks: its own and the (K_l - 1) / 2 on each side (K_l odd; the sequence wraps around, as the
    release's `roll`),
  * K_r random blocks, distinct and outside the local ones, drawn per query block,

and global queries attend densely to every key. One pattern serves the whole batch and every head (as the
release). In training the random blocks are redrawn per layer and per step from the layer's dropout key; at
evaluation they come from a fixed seed, so evaluation is deterministic (docs/design.md, SViTT; the release redraws
at evaluation too). Encoders give every layer its own evaluation pattern, the seed's key with the layer index
folded in (the option `layer`, which attention layers pass: a Python int unrolled, traced under `nn.scan`), so
evaluation sees what training sees, independent patterns in successive layers; with one pattern shared by every
layer a query block would reach the same few blocks in every layer.

Shapes stay static: the pattern is an int [nblk, K_l + K_r] array, keys and values are gathered per query block
([B, nblk, (K_l + K_r) G, H, K]), so any G works and no tile size is required. Padding: N is padded with masked
keys up to nblk * G (the release leaves padded keys unmasked); padded queries are dropped from the output.

Edges per local query: num_global + (K_l + K_r) G (equation 1 counts the (K_l + K_r) G block part).

Short sequences: when K_l + K_r >= nblk every query block would meet every key block, so the layer runs dense
attention (the same result, computed without gathers). This happens in the late layers of a pruned encoder (SViTT
prunes after layers 4, 7 and 10); a configuration whose *input* has fewer blocks than K_l + K_r is still rejected
by `check_pattern_args` where the model is built.

Token order (table A7): `token_order(grid, 'morton' | 'hilbert' | 'raster')` gives a permutation of the local
tokens that makes blocks compact in space-time; `block_sparse_attention(..., order=perm)` applies it before
blocking and undoes it after, so callers keep raster order.

Registered as the attention kernel 'block_sparse' (vlm/nn/kernels/registry.py), with `takes_layer`: attention
layers pass it their encoder layer's index as `layer`. Options through `attention_kwargs`: block_size,
local_blocks, random_blocks, num_global, eval_seed, order, implementation ('auto': cuDNN's fused kernel on GPUs, the
written-out blocked softmax elsewhere), head_groups (the written-out path's independent head groups;
`default_head_groups`). Self-attention only: queries and keys are the same token sequence.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vlm.nn import dropout as dropout_lib
from vlm.nn.kernels import dense
from vlm.nn.kernels import registry


KERNEL_NAME = "block_sparse"  # the name layers select this kernel by (`MultiHeadAttention.attention`)


def num_blocks(num_local: int, block_size: int) -> int:
  if block_size < 1:
    raise ValueError(f"block_size={block_size}; expected a positive number of tokens per block.")
  return -(-num_local // block_size)


def check_pattern_args(nblk: int, local_blocks: int, random_blocks: int) -> None:
  if local_blocks < 1 or local_blocks % 2 == 0:
    raise ValueError(f"local_blocks={local_blocks}; expected an odd number >= 1 (own block plus neighbours on "
                     "both sides).")
  if random_blocks < 0:
    raise ValueError(f"random_blocks={random_blocks}; expected >= 0.")
  if local_blocks + random_blocks > nblk:
    raise ValueError(f"local_blocks + random_blocks = {local_blocks + random_blocks} exceeds the {nblk} blocks of "
                     "the sequence; lower them or the block size.")


def _seeds(eval_seed: int | Sequence[int]) -> tuple[int, ...]:
  return tuple(eval_seed) if isinstance(eval_seed, (tuple, list)) else (eval_seed,)


def eval_key(eval_seed: int | Sequence[int]) -> jax.Array:
  """The key of the fixed evaluation pattern: `jax.random.key(seed)`, then each further int folded in."""
  seeds = _seeds(eval_seed)
  key = jax.random.key(int(seeds[0]))
  for extra in seeds[1:]:
    key = jax.random.fold_in(key, int(extra))
  return key


def block_pattern(rng: jax.Array, nblk: int, local_blocks: int, random_blocks: int) -> jax.Array:
  """int32 [nblk, K_l + K_r]: for each query block, its local blocks then its random blocks."""
  check_pattern_args(nblk, local_blocks, random_blocks)
  rows = jnp.arange(nblk)[:, None]
  half = local_blocks // 2
  local = (rows + jnp.arange(-half, half + 1)[None]) % nblk  # [nblk, K_l]
  if not random_blocks:
    return local.astype(jnp.int32)
  scores = jax.random.uniform(rng, (nblk, nblk))
  is_local = jnp.zeros((nblk, nblk), bool).at[rows, local].set(True)
  scores = jnp.where(is_local, -1.0, scores)  # local blocks are never drawn again
  _, random = jax.lax.top_k(scores, random_blocks)
  return jnp.concatenate([local, jnp.sort(random, axis=-1)], axis=-1).astype(jnp.int32)


def dense_mask(pattern: jax.Array, num_global: int, num_local: int, block_size: int) -> jax.Array:
  """bool [N_total, N_total] (query, key): the edges of the sparse graph, for dense reference computations."""
  nblk = pattern.shape[0]
  block_of = jnp.arange(num_local) // block_size
  allowed_blocks = jnp.zeros((nblk, nblk), bool).at[jnp.arange(nblk)[:, None], pattern].set(True)
  local = allowed_blocks[block_of][:, block_of]  # [N, N]
  n = num_global + num_local
  mask = jnp.ones((n, n), bool)
  return mask.at[num_global:, num_global:].set(local)


def token_order(grid: Sequence[int], kind: str = "morton") -> np.ndarray:
  """Permutation of raster-ordered (t, h, w) tokens along a space-filling curve: int [T*H*W]."""
  t, h, w = grid
  coords = np.stack(np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 3)
  if kind == "raster":
    return np.arange(len(coords))
  bits = max(1, int(np.ceil(np.log2(max(grid)))))
  if kind == "morton":
    code = np.zeros(len(coords), np.int64)
    for b in range(bits):  # interleave the bits of t, h, w (t most significant in each triple)
      for axis in range(3):
        code |= ((coords[:, axis] >> b) & 1).astype(np.int64) << (3 * b + (2 - axis))
    return np.argsort(code, kind="stable")
  if kind == "hilbert":
    return np.argsort(np.array([_hilbert_index(c, bits) for c in coords]), kind="stable")
  raise ValueError(f"token order {kind!r}; expected 'raster', 'morton' or 'hilbert'.")


def _hilbert_index(coord: np.ndarray, bits: int) -> int:
  """Index of a 3-D point on the Hilbert curve of side 2**bits (Skilling's transpose algorithm)."""
  x = [int(v) for v in coord]
  n = 3
  m = 1 << (bits - 1)
  q = m
  while q > 1:  # inverse undo of excess work
    p = q - 1
    for i in range(n):
      if x[i] & q:
        x[0] ^= p
      else:
        t = (x[0] ^ x[i]) & p
        x[0] ^= t
        x[i] ^= t
    q >>= 1
  for i in range(1, n):  # Gray encode
    x[i] ^= x[i - 1]
  t = 0
  q = m
  while q > 1:
    if x[n - 1] & q:
      t ^= q - 1
    q >>= 1
  for i in range(n):
    x[i] ^= t
  index = 0
  for b in range(bits - 1, -1, -1):  # interleave the transposed bits
    for i in range(n):
      index = (index << 1) | ((x[i] >> b) & 1)
  return index


def default_head_groups(num_heads: int) -> int:
  """Head groups of the explicit path: 2 on CPUs (when the heads split evenly), 1 elsewhere.

  Why: XLA:CPU runs each batched dot of small blocks on one thread, and its thunk executor runs independent
  operations side by side only when more than two are ready at once (it does not split a ready queue of two).
  Two head groups make every dot of the forward and backward pass one of a pair of independent ones, so both
  cores work. `python -m vlm.tools.bench_attention` (SViTT's (1, 3, 56) at 8 frames, 12 heads, 2-core CPU), two
  interleaved runs: 1 group 237-254 ms (efficiency 0.61-0.66), 2 groups 171-192 ms (0.77-0.86), 3 groups 203-204
  ms (0.74-0.75) against a 1015-1091 ms dense kernel; a first trial read 262 ms for 4 groups and 219 ms for 6.
  """
  if jax.default_backend() == "cpu" and num_heads % 2 == 0:
    return 2
  return 1


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _blocked_attention(k_sel: jax.Array, v_sel: jax.Array, q_scaled: jax.Array, bias: jax.Array | None,
                       mask: jax.Array | None, keep: jax.Array | None, keep_scale: float) -> jax.Array:
  """The blocked softmax attention of the explicit path, with a hand-written backward pass.

  Args:
    k_sel, v_sel: [B, H, nblk, S_b, K] each query block's keys and values (globals first, then gathered blocks).
    q_scaled: [B, H, nblk, G, K] the query blocks times K^-1/2.
    bias: optional float [B|1, H, nblk, S_b, G] logit bias of every edge; mask: optional bool, broadcastable to
      the logits [B, H, nblk, S_b, G], True where a key may be attended to.
    keep: optional bool [B, H, nblk, S_b, G] attention-dropout keep mask; keep_scale: 1 / (1 - rate).

  Returns:
    [B, H, nblk, K, G]: each block's output, feature-major (the layout of the dots below).

  Scores are laid out key-major, [.., S_b, G] (softmax over the key axis -2): XLA:CPU runs these small batched
  dots ~1.4x faster in this layout than as [.., G, S_b] (measured on the [56 x 64] x [64 x 225] dots of SViTT's
  (1, 3, 56) setting); the gather-free core took 195 ms in this form under autodiff, 211 ms with the output as
  [.., G, K], 251 ms query-major, and 267 ms with a hand-written VJP that kept every dot's contracted axis minor.

  Why a hand-written VJP (the dots keep the layouts autodiff gives them): the backward pass has two pairs of
  independent dots, dP = dO V^T with dV = P^T dO, and dQ = dS K with dK = dS^T Q. Under autodiff XLA:CPU ran all
  four in turn on one thread: its buffer assignment put dV's output over buffers dP reads (the scores), a
  write-after-read dependency for its thunk executor. Here each pair ends in `optimization_barrier`, which keeps
  the pair's operands alive until both dots are done, so neither output can take the other's input buffer, and
  the backward reuses the forward's probabilities instead of recomputing the softmax. `python -m
  vlm.tools.bench_attention` on the 2-core CPU, one head group, interleaved with the autodiff version: 259-277 ->
  222-237 ms against a 984-1039 ms dense kernel (efficiency 0.54-0.55 -> 0.63-0.64); with a learned bias (SViTT's
  relative positions) 474 -> 429 ms; same values and gradients to float32 rounding.
  """
  return _blocked_attention_fwd(k_sel, v_sel, q_scaled, bias, mask, keep, keep_scale)[0]


def _blocked_attention_fwd(k_sel, v_sel, q_scaled, bias, mask, keep, keep_scale):
  logits = jnp.einsum("bhnsd,bhngd->bhnsg", k_sel, q_scaled, preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = dense.softmax(logits, axis=-2)
  weights = probs if keep is None else jnp.where(keep, probs * keep_scale, 0.0)
  out = jnp.einsum("bhnsd,bhnsg->bhndg", v_sel, weights.astype(v_sel.dtype))
  return out, (k_sel, v_sel, q_scaled, bias, mask, keep, probs)


def _blocked_attention_bwd(keep_scale, residuals, d_out):
  k_sel, v_sel, q_scaled, bias, mask, keep, probs = residuals
  weights = probs if keep is None else jnp.where(keep, probs * keep_scale, 0.0)
  d_v = jnp.einsum("bhnsg,bhndg->bhnsd", weights.astype(d_out.dtype), d_out)
  d_w = jnp.einsum("bhnsd,bhndg->bhnsg", v_sel, d_out, preferred_element_type=jnp.float32)
  d_v, d_w, probs, v_sel, d_out = jax.lax.optimization_barrier((d_v, d_w, probs, v_sel, d_out))
  d_p = d_w if keep is None else jnp.where(keep, d_w * keep_scale, 0.0)
  d_logits = probs * (d_p - jnp.sum(d_p * probs, axis=-2, keepdims=True))  # softmax backward over keys
  if mask is not None:  # masked logits were constants (exactly 0 already unless a whole row is masked)
    d_logits = jnp.where(mask, d_logits, 0.0)
  d_q = jnp.einsum("bhnsg,bhnsd->bhngd", d_logits.astype(k_sel.dtype), k_sel)
  d_k = jnp.einsum("bhnsg,bhngd->bhnsd", d_logits.astype(q_scaled.dtype), q_scaled)
  d_q, d_k, d_logits, k_sel, q_scaled = jax.lax.optimization_barrier((d_q, d_k, d_logits, k_sel, q_scaled))
  d_bias = None
  if bias is not None:
    d_bias = d_logits if bias.shape[0] == d_logits.shape[0] else d_logits.sum(axis=0, keepdims=True)
    d_bias = d_bias.astype(bias.dtype)
  return d_k.astype(k_sel.dtype), d_v.astype(v_sel.dtype), d_q.astype(q_scaled.dtype), d_bias, None, None


_blocked_attention.defvjp(_blocked_attention_fwd, _blocked_attention_bwd)


@registry.register_attention(KERNEL_NAME, takes_layer=True)
def block_sparse_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, mask: jax.Array | None = None,
                           bias: jax.Array | None = None, dropout_rate: float = 0.0,
                           dropout_rng: jax.Array | None = None, deterministic: bool = True,
                           block_size: int = 56, local_blocks: int = 1, random_blocks: int = 3,
                           num_global: int = 1, eval_seed: int | Sequence[int] = 0,
                           order: Sequence[int] | None = None,
                           pattern: jax.Array | None = None, implementation: str = "auto",
                           layer: int | jax.Array | None = None, head_groups: int | None = None) -> jax.Array:
  """Block-sparse softmax self-attention; same contract as `vlm.nn.kernels.dense.dense_attention`.

  Args:
    query, key, value: [B, N_total, H, K], N_total = num_global + N local tokens.
    mask: optional [B, N_total] bool, True where a key may be attended to.
    bias: optional logit bias broadcastable to [B, H, N_total, N_total] (e.g. relative positions); the entries of
      the sparse edges are gathered from it.
    dropout_rate, dropout_rng, deterministic: dropout on the attention probabilities (training); in training the
      random blocks are drawn from `dropout_rng` (or from `eval_seed` when it is None).
    block_size: G tokens per block; local_blocks: K_l (odd); random_blocks: K_r; num_global: leading tokens
      with dense attention both ways.
    eval_seed: seed of the fixed pattern used at evaluation: an int, or ints folded in turn (`eval_key`).
    order: optional permutation of the N local tokens (`token_order`) applied before blocking.
    pattern: optional int [nblk, K_l + K_r] pattern overriding the draw (tests, analysis).
    implementation: 'auto' | 'fused' | 'explicit', as `dense_attention`. 'fused' runs every query block with
      its gathered keys as one batch of small attention problems through `dense.fused_attention` (cuDNN
      flash attention on GPUs); 'explicit' writes the blocked softmax out, in the layout XLA:CPU runs fastest.
      'auto' is fused on GPUs only; attention-probability dropout always takes the explicit path.
    layer: the encoder layer's index (an int, or traced under `nn.scan`), folded into the evaluation key so
      that every layer has its own fixed pattern (attention layers pass it); None: the pattern of `eval_seed`
      alone.
    head_groups: the explicit path splits the heads into this many groups computed as independent operations
      (same result); None: 2 on CPUs when H is even (`default_head_groups`), else 1.

  Returns:
    [B, N_total, H, K].
  """
  b, n_total, h, dk = query.shape
  if key.shape[1] != n_total:  # the blocks of queries and keys are the same tokens' blocks
    raise ValueError(f"block-sparse attention is self-attention: {n_total} queries against {key.shape[1]} keys.")
  g_num = num_global
  n = n_total - g_num
  if n <= 0:
    raise ValueError(f"block-sparse attention over {n_total} tokens with num_global={g_num}: no local tokens.")
  implementation = dense.resolve_implementation(implementation)
  nblk = num_blocks(n, block_size)
  if pattern is None and local_blocks + random_blocks >= nblk:  # every block is a key block: dense
    check_pattern_args(max(nblk, local_blocks + random_blocks), local_blocks, random_blocks)
    return dense.dense_attention(query, key, value, mask=mask, bias=bias, dropout_rate=dropout_rate,
                                         dropout_rng=dropout_rng, deterministic=deterministic,
                                         implementation=implementation)
  if pattern is None:
    training = not deterministic and dropout_rng is not None
    rng = jax.random.fold_in(dropout_rng, 0x5B10C) if training else eval_key(eval_seed)
    if layer is not None and not training:
      rng = jax.random.fold_in(rng, layer)
    pattern = block_pattern(rng, nblk, local_blocks, random_blocks)
  kb_num = pattern.shape[1]
  pad = nblk * block_size - n
  valid = jnp.ones((b, n_total), bool) if mask is None else mask.astype(bool)
  perm = None if order is None else jnp.asarray(order, jnp.int32)
  if perm is not None and perm.shape != (n,):
    raise ValueError(f"order has shape {perm.shape}; expected a permutation of the {n} local tokens.")

  def local_part(x, fill=0):
    x = x[:, g_num:]
    if perm is not None:
      x = jnp.take(x, perm, axis=1)
    pad_width = [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)
    return jnp.pad(x, pad_width, constant_values=fill)

  positions = jnp.arange(g_num, n_total)  # original index of each local token, in blocking order
  if perm is not None:
    positions = positions[perm]
  positions = jnp.pad(positions, (0, pad), constant_values=0)
  pos_blocks = positions.reshape(nblk, block_size)
  # Keys of each query block: the globals, then its K_l + K_r gathered blocks (S_b = g + (K_l + K_r) G keys).
  m_sel = local_part(valid, fill=False).reshape(b, nblk, block_size)[:, pattern].reshape(b, nblk, -1)
  m_all = jnp.concatenate([jnp.broadcast_to(valid[:, None, :g_num], (b, nblk, g_num)), m_sel], axis=2)
  k_pos = jnp.concatenate([jnp.broadcast_to(jnp.arange(g_num)[None], (nblk, g_num)),
                           pos_blocks[pattern].reshape(nblk, kb_num * block_size)], axis=1)  # [nblk, S_b]
  masked = mask is not None or pad > 0  # without padding or a caller's mask every key is valid: skip the mask
  full_bias = None if bias is None else jnp.broadcast_to(bias, (bias.shape[0], h, n_total, n_total))

  if implementation == "fused" and (deterministic or dropout_rate == 0.0):
    # Token-major blocks [B, nblk, G, H, K]: each query block and its S_b keys is one small attention problem;
    # batched over B * nblk they are one call of the fused kernel, with no reordering of heads.
    blocks = lambda x: local_part(x).reshape(b, nblk, block_size, h, dk)
    # The key blocks are selected by a one-hot matmul rather than a gather: the gather's transpose in the
    # backward pass is a scatter-add (atomic adds on GPUs), the matmul's is another matmul. Exact: HIGHEST
    # precision keeps float32 out of TF32, and each output is one input times 1.
    select = jax.nn.one_hot(pattern, nblk, dtype=query.dtype)  # [nblk, K_l + K_r, nblk]

    def keys_of_blocks(x):
      glob = jnp.broadcast_to(x[:, None, :g_num], (b, nblk, g_num, h, dk))
      sel = jnp.einsum("nkm,bmghd->bnkghd", select, blocks(x), precision=jax.lax.Precision.HIGHEST)
      sel = sel.reshape(b, nblk, kb_num * block_size, h, dk)
      return jnp.concatenate([glob, sel], axis=2).reshape(b * nblk, -1, h, dk)

    f_bias = None
    if bias is not None:  # bias[..., query position, key position] per (block, query, key): [B*nblk, H, G, S_b]
      f_bias = full_bias[:, :, pos_blocks[:, :, None], k_pos[:, None, :]].transpose(0, 2, 1, 3, 4)
      f_bias = jnp.broadcast_to(f_bias, (b,) + f_bias.shape[1:]).reshape(b * nblk, h, block_size, -1)
    out = dense.fused_attention(blocks(query).reshape(b * nblk, block_size, h, dk), keys_of_blocks(key),
                                        keys_of_blocks(value), bias=f_bias,
                                        mask=m_all.reshape(b * nblk, -1) if masked else None)
    out_loc = out.reshape(b, nblk * block_size, h, dk)[:, :n]
  else:
    # Head-major blocks [B, H', nblk, G, K] of a group of H' heads: batch and head lead, so every einsum is a plain
    # batched matmul (XLA:CPU inserts transposes around dots whose batch axes are not leading).
    groups = default_head_groups(h) if head_groups is None else head_groups
    if groups < 1 or h % groups:
      raise ValueError(f"head_groups={groups}; expected a divisor of the {h} heads.")
    hg = h // groups
    group = lambda g: slice(g * hg, (g + 1) * hg)  # group g's heads

    def heads_first(x, g):  # [B, N, H, K] -> group g's [B, H', nblk, G, K]
      x = local_part(x[:, :, group(g)])
      return x.reshape(b, nblk, block_size, hg, dk).transpose(0, 3, 1, 2, 4)

    def keys_of_blocks(x, g):  # [B, H', nblk, S_b, K]
      sel = heads_first(x, g)[:, :, pattern].reshape(b, hg, nblk, kb_num * block_size, dk)
      glob = x[:, :g_num, group(g)].transpose(0, 2, 1, 3)[:, :, None]
      return jnp.concatenate([jnp.broadcast_to(glob, (b, hg, nblk, g_num, dk)), sel], axis=3)

    edge_bias = None
    if bias is not None:
      # bias[..., query position, key position] for every (block, key, query) edge: [B|1, H, nblk, S_b, G]
      edge_bias = full_bias[:, :, pos_blocks[:, None, :], k_pos[:, :, None]]
    keep, keep_scale = None, 1.0
    if not deterministic and dropout_rate > 0.0:
      if dropout_rng is None:
        raise ValueError("Attention dropout needs dropout_rng.")
      keep = dropout_lib.keep_mask(dropout_rng, (b, h, nblk, m_all.shape[-1], block_size), dropout_rate)
      keep_scale = 1.0 / (1.0 - dropout_rate)
    scale = jnp.asarray(dk ** -0.5, query.dtype)
    edge_mask = m_all[:, None, :, :, None] if masked else None  # [B, 1, nblk, S_b, 1]
    heads = lambda x, g: None if x is None else x[:, group(g)]  # group g of a [B|1, H, ...] array
    out_loc = jnp.concatenate([
        _blocked_attention(keys_of_blocks(key, g), keys_of_blocks(value, g), heads_first(query, g) * scale,
                           heads(edge_bias, g), edge_mask, heads(keep, g), keep_scale)
        for g in range(groups)], axis=1)  # [B, H, nblk, K, G]
    out_loc = out_loc.transpose(0, 2, 4, 1, 3).reshape(b, nblk * block_size, h, dk)[:, :n]
  if perm is not None:
    out_loc = jnp.zeros_like(out_loc).at[:, perm].set(out_loc)  # back to the caller's order

  parts = [out_loc]
  if g_num:  # global queries: dense over every key
    g_rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, 1)
    parts.insert(0, dense.dense_attention(
        query[:, :g_num], key, value, mask=None if mask is None else valid,
        bias=None if bias is None else full_bias[:, :, :g_num], dropout_rate=dropout_rate, dropout_rng=g_rng,
        deterministic=deterministic, implementation=implementation))
  return jnp.concatenate(parts, axis=1)


def edge_count(num_local: int, num_global: int, block_size: int, local_blocks: int, random_blocks: int) -> int:
  """Attention edges of one block-sparse layer: local queries x (globals + (K_l + K_r) G) + globals x all.

  Equation 1 of the supplement counts the block part, N (K_l + K_r) G; this adds the global rows and columns
  (and counts padded key slots of the last block as the kernel computes them)."""
  n = num_local
  return n * (num_global + (local_blocks + random_blocks) * block_size) + num_global * (num_global + n)


def svitt_edges(num_frames: int, *, patches_per_frame: int = 196, visual_layers: int = 12,
                multimodal_layers: int = 3, text_len: int = 32, local_blocks: int = 1, random_blocks: int = 3,
                block_size: int = 56, visual_keep: float = 1.0, visual_prune_after: Sequence[int] = (4, 7, 10),
                multimodal_keep: float = 1.0, multimodal_prune_after: Sequence[int] = (1,),
                num_global: int = 1) -> dict[str, float]:
  """SViTT's attention-graph size and edge sparsity (supplement equations 1-3, table A1).

  Visual layer l: N_v^(l) (K_l + K_r) G block edges (equation 1) plus the [CLS] edges (its dense row and every
  token's edge to it: 2 N + 1); tokens are pruned to ceil(q_v N) after the layers in `visual_prune_after`
  (1-based; the release's `token_drop_loc=[3, 6, 9]` counted from 0). Multimodal layer l: N_m^(l) N_t edges
  (equation 2), with the visual tokens plus [CLS] entering and ceil(q_m N) kept after `multimodal_prune_after`.
  Sparsity (equation 3): 1 - edges / (L_v N_v^2 + L_m N_t N_v) with the unpruned N_v.

  With table A1's settings this gives 1.475M / 0.802 (4 frames, q_v 0.7), 2.605M / 0.912 (8, 0.6) and
  4.622M / 0.961 (16, 0.5) against the table's 1.48M / 0.80, 2.60M / 0.91, 4.61M / 0.96 (tests/
  test_nn_block_sparse.py). Without the [CLS] edges the counts fall 0.6-1.3% short (outside the table's
  rounding); with pruning after layers 3, 6, 9 they fall 9-14% short. That is how the reading above was settled.
  """
  n0 = num_frames * patches_per_frame
  n, visual = n0, 0
  per_query = (local_blocks + random_blocks) * block_size
  for layer in range(1, visual_layers + 1):
    visual += n * per_query + num_global * (2 * n + num_global)
    if layer in visual_prune_after:
      n = math.ceil(visual_keep * n)
  m, multimodal = n + num_global, 0
  for layer in range(1, multimodal_layers + 1):
    multimodal += m * text_len
    if layer in multimodal_prune_after:
      m = math.ceil(multimodal_keep * m)
  total = visual + multimodal
  dense = visual_layers * n0 ** 2 + multimodal_layers * text_len * n0
  return {"edges": float(total), "visual_edges": float(visual), "multimodal_edges": float(multimodal),
          "dense_edges": float(dense), "sparsity": 1.0 - total / dense}
