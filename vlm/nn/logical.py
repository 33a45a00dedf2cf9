"""Logical axis names used by the `vlm.nn` layers.

`vlm/parallel/axes.py` owns the vocabulary and the rules that map it to the mesh; this module only spells the
names the layers use, so a typo is an import error rather than a silently replicated weight. Every name here
must be in `vlm.parallel.axes.VOCABULARY` (tests/test_nn_transformer.py checks it).

Usage: `nn.with_logical_partitioning(init, (EMBED, MLP))` on a [embed, mlp] kernel, and
`nn.with_logical_constraint(x, (BATCH, TOKENS, ACT_EMBED))` on activations at block boundaries.
"""

# Weight dimensions.
EMBED = "embed"          # model width d_model
MLP = "mlp"              # feed-forward hidden units
HEADS = "heads"          # attention heads
KV = "kv"                # per-head features (d_kv)
VOCAB = "vocab"          # rows of a token embedding table
LAYERS = "layers"        # stacked layers of a scanned encoder
PROJ = "proj"            # outputs of a projection head into a common space
CONV_IN = "conv_in"      # input channels of a tokenizer kernel
CONV_TIME = "conv_time"
CONV_HEIGHT = "conv_height"
CONV_WIDTH = "conv_width"
POS = "pos"              # positions of a learned positional table (generic axis)
POS_TIME = "pos_time"
POS_HEIGHT = "pos_height"
POS_WIDTH = "pos_width"

# Activation dimensions.
BATCH = "batch"
TOKENS = "tokens"
ACT_EMBED = "act_embed"
ACT_MLP = "act_mlp"

ALL = (EMBED, MLP, HEADS, KV, VOCAB, LAYERS, PROJ, CONV_IN, CONV_TIME, CONV_HEIGHT, CONV_WIDTH, POS, POS_TIME,
       POS_HEIGHT, POS_WIDTH, BATCH, TOKENS, ACT_EMBED, ACT_MLP)
