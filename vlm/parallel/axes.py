"""The one vocabulary of logical axis names, and the rule presets that map it to the mesh.

Models name every parameter dimension with a logical axis (`nn.with_logical_partitioning(init, ('embed',
'mlp'))`) and may constrain activations at block boundaries (`nn.with_logical_constraint(x, ('batch',
'tokens', 'act_embed'))`). The trainer maps logical names to mesh axes with one of the presets below, chosen by
`config.sharding`. Model code never names a mesh axis, so the same model runs data-parallel, FSDP or FSDP +
tensor-parallel by changing one config string.

Weights and activations use different names on purpose (`embed` vs `act_embed`): FSDP shards the weights'
embedding dimension over 'fsdp' while the activations' embedding dimension stays whole, and one shared name
could not say both.

A name outside this vocabulary is an error (see `partitioning.check_logical_names`): a typo would otherwise
silently replicate a weight. Add new names here, with a comment, and give them a rule in every preset (None
is a rule: replicate).
"""
from __future__ import annotations

from typing import Sequence

# Mesh axes. The batch is split over DATA and FSDP together (FSDP is data parallelism whose weights are
# sharded too); TENSOR splits the inside of matmuls (heads, MLP hidden units, vocabulary).
DATA = "data"
FSDP = "fsdp"
TENSOR = "tensor"
MESH_AXES = (DATA, FSDP, TENSOR)
BATCH_AXES = (DATA, FSDP)

# Weight dimensions.
WEIGHT_AXES = {
    "embed": "model width (d_model): rows of most kernels, LayerNorm scales, positional tables",
    "mlp": "hidden units of a feed-forward block",
    "heads": "attention heads (q/k/v kernels [embed, heads, kv], output kernel [heads, kv, embed])",
    "kv": "per-head feature dimension",
    "vocab": "rows of a token embedding table or output vocabulary",
    "classes": "outputs of a classification head",
    "proj": "output of a projection head into a common (cross-modal) space",
    "conv_in": "input channels / flattened pixels or samples of a tokenizer kernel",
    "conv_time": "temporal extent of a tubelet / 1-D conv kernel",
    "conv_height": "vertical extent of a patch / tube kernel",
    "conv_width": "horizontal extent of a patch / tube kernel",
    "pos": "positions of a learned positional table (flattened or one factorised axis)",
    "pos_time": "temporal positions of a factorised positional table",
    "pos_height": "vertical positions of a factorised positional table",
    "pos_width": "horizontal positions of a factorised positional table",
    "layers": "stacked layers of a scanned encoder (nn.scan)",
    "norm": "features of a normalisation layer that is not over `embed`",
}

# Activation dimensions.
ACTIVATION_AXES = {
    "batch": "examples of the (global) batch",
    "views": "test-time views / crops of one example",
    "frames": "time steps of a video or audio frame sequence",
    "captions": "candidate captions of one clip (MIL-NCE K)",
    "tokens": "sequence positions (tokens, patches, tubes)",
    "act_embed": "model width of an activation",
    "act_mlp": "hidden units of a feed-forward activation",
    "act_heads": "attention heads of an activation",
    "act_kv": "per-head features of an activation",
    "act_vocab": "vocabulary logits",
    "act_classes": "class logits",
    "act_proj": "features in a common (cross-modal) space",
}

VOCABULARY = frozenset(WEIGHT_AXES) | frozenset(ACTIVATION_AXES)

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# Every preset names every vocabulary entry, so "which axis does X use" is answered by reading one table.
# Order matters where two names could claim one mesh axis: flax assigns the first matching rule whose mesh
# axis is still free in that array.
_REPLICATED = tuple((name, None) for name in sorted(VOCABULARY - {"batch"}))

PRESETS: dict[str, tuple[tuple[str, str | tuple[str, ...] | None], ...]] = {
    # Pure data parallelism: weights replicated, batch split over every batch axis.
    "dp": (("batch", BATCH_AXES),) + _REPLICATED,
    # FSDP (ZeRO-3 style): weights and optimizer state sharded along their width; XLA all-gathers them per
    # layer. Shard `embed` because nearly every weight has it; `vocab`, `mlp` stay whole so a 2-D kernel is
    # split along exactly one dimension.
    "fsdp": (("batch", BATCH_AXES), ("embed", FSDP))
            + tuple(r for r in _REPLICATED if r[0] != "embed"),
    # FSDP + tensor (Megatron-style) parallelism: the inner dimension of every matmul pair (mlp, heads,
    # vocab) splits over 'tensor', so the column-parallel kernel and the row-parallel kernel that follows it
    # need one reduction between them.
    "fsdp_tp": (
        ("batch", BATCH_AXES),
        ("embed", FSDP),
        ("mlp", TENSOR),
        ("heads", TENSOR),
        ("vocab", TENSOR),
        ("act_mlp", TENSOR),
        ("act_heads", TENSOR),
        ("act_vocab", TENSOR),
    ) + tuple(r for r in _REPLICATED
              if r[0] not in ("embed", "mlp", "heads", "vocab", "act_mlp", "act_heads", "act_vocab")),
}
