"""Logical axis names: the only vocabulary model code uses to describe parameter/activation dims.

Model code annotates parameters with these names (`nnx.with_partitioning(init, (EMBED, MLP))`);
`sharding/rules.py` alone maps them to mesh axes. Never write these as free strings in layers.
"""

# Parameter axes.
EMBED = "embed"          # model width D (MMDiT 1536, T5 4096)
MLP = "mlp"              # feed-forward hidden (4D for MMDiT, d_ff for T5)
HEADS = "heads"          # fused heads*head_dim projection dim (q/k/v out, attn-out in)
KV = "kv"                # per-head dim when kept separate
VOCAB = "vocab"          # text vocabulary (text head, T5 embedding)
LAYERS = "layers"        # stacked (scanned) layer axis; always unsharded
MOD = "modulation"       # AdaLN modulation outputs (6D / 2D)
COND = "cond_embed"      # conditioning inputs (timestep features, T5 width into context embedder)
PATCH = "patch"          # patch vectors (p*p*C)
CONV_IN = "conv_in"      # conv kernels: input channels
CONV_OUT = "conv_out"    # conv kernels: output channels
LATENT = "latent"        # flattened latent (stage-2 matching MLP: 16*64*64)
NORM = "norm"            # norm scales/biases
REL_BUCKETS = "rel_buckets"  # T5 relative-attention buckets

# Activation axes.
ACT_BATCH = "act_batch"
ACT_BATCH_ALL = "act_batch_all"  # batch of a tower with no tensor-parallel layer (VAE): every mesh axis
ACT_LEN = "act_len"
ACT_EMBED = "act_embed"
ACT_HEADS = "act_heads"
ACT_MLP = "act_mlp"
ACT_VOCAB = "act_vocab"
