"""DiT and DiT-MoE in plain PyTorch (eager mode): the baseline of `benches/cpu-step.sh`.

The same model as `nn/src/dit.rs`, written the way a PyTorch user would write it from the
papers' reference code (facebookresearch/DiT and feizc/DiT-MoE `models.py`):

- the same shapes and the same `state_dict` names as the reference code and as our
  checkpoints, so `model.load_state_dict(safetensors.torch.load_file(...))` loads either;
- attention through `F.scaled_dot_product_attention`;
- the dense FFN is DiT's GELU(tanh) MLP; the MoE FFN is DiT-MoE's token choice: a softmax
  router over the experts, top-k without renormalisation, SwiGLU experts run one after the
  other on the rows routed to them (the reference's training path), a shared SwiGLU expert
  for every token, and the expert-level balance loss.

The model is built from our TOML `[model]` table (see `model_config`). Only what the
benchmark configs use is implemented: a dense DiT, or token-choice MoE in every block with
SwiGLU experts. Anything else is refused with an error naming the field.
"""

import math
import tomllib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------
# Configuration: our `[model]` table (nn/src/config.rs, nn/src/moe/config.rs)
# --------------------------------------------------------------------------------------------

_MODEL_DEFAULTS = {
    "mlp_ratio": 4.0,
    "class_dropout_prob": 0.1,
    "learn_sigma": True,
    "moe": None,
    "moe_placement": "every_block",
}
_MODEL_REQUIRED = (
    "input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads",
    "num_classes",
)
_MOE_KEYS = {"num_experts", "expert_hidden", "expert_kind", "shared_expert_hidden", "routing",
             "router"}
_ROUTING_KEYS = {"kind", "top_k", "renormalize", "balance_loss_alpha", "gate"}


class ConfigError(ValueError):
    """A model config this baseline does not implement (or that is malformed)."""


def _refuse_unknown(table, known, at):
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"{at}: unknown field(s) {', '.join(unknown)}")


def model_config(table):
    """Checks a `[model]` table (or the JSON `config` of our checkpoints) and fills in our
    defaults (mlp_ratio 4, class_dropout_prob 0.1, learn_sigma, no MoE). Refuses what this
    baseline does not implement: a preset name, MoE outside every block, routings other than
    token choice, renormalised top-k weights, experts other than SwiGLU."""
    if isinstance(table, str):
        raise ConfigError(f"model: a preset name ({table!r}); give a full [model] table")
    _refuse_unknown(table, set(_MODEL_REQUIRED) | set(_MODEL_DEFAULTS), "model")
    missing = [k for k in _MODEL_REQUIRED if k not in table]
    if missing:
        raise ConfigError(f"model: missing field(s) {', '.join(missing)}")
    cfg = {**_MODEL_DEFAULTS, **table}
    d, heads = cfg["hidden_size"], cfg["num_heads"]
    if d % heads or d % 4 or cfg["input_size"] % cfg["patch_size"]:
        raise ConfigError("model: hidden_size must divide by num_heads and by 4, "
                          "input_size by patch_size")
    moe = cfg["moe"]
    if moe is None:
        return cfg
    _refuse_unknown(moe, _MOE_KEYS, "model.moe")
    missing = [k for k in ("num_experts", "expert_hidden", "routing") if k not in moe]
    if missing:
        raise ConfigError(f"model.moe: missing field(s) {', '.join(missing)}")
    if cfg["moe_placement"] != "every_block":
        raise ConfigError(f"model.moe_placement: only every_block is implemented here, "
                          f"found {cfg['moe_placement']!r}")
    moe = {"expert_kind": "swi_glu", "shared_expert_hidden": None, **moe}
    router = moe.pop("router", {"kind": "linear"})
    if router.get("kind") != "linear":
        raise ConfigError(f"model.moe.router: only the linear router is implemented here, "
                          f"found {router!r}")
    if moe["expert_kind"] != "swi_glu":
        raise ConfigError(f"model.moe.expert_kind: only swi_glu is implemented here, "
                          f"found {moe['expert_kind']!r}")
    routing = dict(moe["routing"])
    if routing.get("kind") != "token_choice":
        raise ConfigError(f"model.moe.routing.kind: only token_choice is implemented here, "
                          f"found {routing.get('kind')!r}")
    _refuse_unknown(routing, _ROUTING_KEYS, "model.moe.routing")
    routing = {"renormalize": False, "balance_loss_alpha": 0.01, "gate": "softmax", **routing}
    if routing.pop("gate") != "softmax":
        raise ConfigError("model.moe.routing.gate: only DiT-MoE's softmax gate is implemented "
                          "here")
    if routing["renormalize"]:
        raise ConfigError("model.moe.routing.renormalize: DiT-MoE does not renormalise; "
                          "true is not implemented here")
    if not 1 <= routing["top_k"] <= moe["num_experts"]:
        raise ConfigError(f"model.moe.routing.top_k: expected 1..{moe['num_experts']}, "
                          f"found {routing['top_k']}")
    cfg["moe"] = {**moe, "routing": routing}
    return cfg


def mlp_hidden(dim, ratio):
    """The dense MLP's width: dim·ratio rounded half away from zero, as `DitConfig::mlp_hidden`
    (the reference truncates; the same for every ratio our configs use)."""
    return math.floor(dim * ratio + 0.5)


def config_from_reference(reference):
    """A reference DiT / DiT-MoE `config.json` (the constructor's kwargs, as the fixtures
    store them) as our `[model]` table: `num_experts` / `num_experts_per_tok` become DiT-MoE's
    FFN (SwiGLU experts of width mlp_ratio·D, a shared expert of 2·D, balance loss 0.01), as
    `DitConfig::from_json` reads them."""
    cfg = dict(reference)
    experts, top_k = cfg.pop("num_experts", None), cfg.pop("num_experts_per_tok", 2)
    if experts is not None:
        d = cfg["hidden_size"]
        cfg["moe"] = {
            "num_experts": experts,
            "expert_hidden": mlp_hidden(d, cfg.get("mlp_ratio", 4.0)),
            "shared_expert_hidden": 2 * d,
            "routing": {"kind": "token_choice", "top_k": top_k, "balance_loss_alpha": 0.01},
        }
    return model_config(cfg)


def read_toml(path):
    """A training config file (experiments/configs/*.toml, benches/cpu/*.toml) as a dict."""
    with open(path, "rb") as f:
        return tomllib.load(f)


# --------------------------------------------------------------------------------------------
# Layers (nn/src/layers/)
# --------------------------------------------------------------------------------------------


def modulate(x, shift, scale):
    """adaLN: x·(1 + scale) + shift, per image, broadcast over its tokens (layers/adaln.rs)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_pos_embed_2d(dim, grid):
    """The fixed 2-D sin-cos table [grid², dim] (layers/patch.rs): first half of the channels
    the column, second half the row, each [sin(pos·ω), cos(pos·ω)], ω_i = 10000^(−i/(dim/4));
    computed in float64."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")

    def encode(pos):
        angles = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([encode(cols), encode(rows)], axis=1).astype(np.float32)


class TimestepEmbedder(nn.Module):
    """`t_embedder`: 256-wide [cos, sin] frequency table of t, then Linear → SiLU → Linear
    (layers/timestep.rs)."""

    frequency_dim = 256

    def __init__(self, dim):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(self.frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    @staticmethod
    def frequencies(t, dim):
        half = dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t):
        return self.mlp(self.frequencies(t, self.frequency_dim))


class LabelEmbedder(nn.Module):
    """`y_embedder`: class table with a null row (index num_classes) for classifier-free
    guidance; in training each label becomes null with probability `dropout_prob`
    (layers/embedding.rs)."""

    def __init__(self, num_classes, dim, dropout_prob):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)
        self.num_classes, self.dropout_prob = num_classes, dropout_prob

    def forward(self, labels, drop=False):
        if drop and self.dropout_prob > 0:
            dropped = torch.rand(labels.shape[0]) < self.dropout_prob
            labels = torch.where(dropped, self.num_classes, labels)
        return self.embedding_table(labels)


class PatchEmbed(nn.Module):
    """`x_embedder`: a p×p stride-p convolution C → D, tokens row-major over the patch grid
    (layers/patch.rs)."""

    def __init__(self, channels, dim, patch):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """`attn`: qkv Linear with bias → scaled dot-product attention per head → proj
    (layers/attention.rs)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)  # scale head_dim^−0.5
        return self.proj(o.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    """DiT's dense FFN `mlp`: fc2(GELU_tanh(fc1(x))), with biases (layers/mlp.rs)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SwiGlu(nn.Module):
    """A DiT-MoE expert: down(SiLU(gate(x)) ⊙ up(x)), no biases (layers/mlp.rs). The reference
    computes each projection in two halves (`pretraining_tp = 2`); that changes rounding only,
    so this is the plain form."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """`moe.gate`: a bare weight [E, D], no bias; not an nn.Linear, so DiT's xavier pass leaves
    its U(±1/√D) init alone (as in DiT-MoE)."""

    def __init__(self, dim, experts):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(experts, dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, tokens):
        return F.linear(tokens, self.weight)


class TokenChoiceMoe(nn.Module):
    """DiT-MoE's `moe` FFN (moe/layer.rs + moe/token_choice.rs): every token of the batch takes
    its top-k experts by softmax score, weighted by the raw scores (not renormalised), plus the
    shared expert; in training also the balance loss α·Σ_i P̄_i·f_i."""

    def __init__(self, dim, moe):
        super().__init__()
        routing = moe["routing"]
        self.top_k, self.alpha = routing["top_k"], routing["balance_loss_alpha"]
        self.num_experts = moe["num_experts"]
        self.gate = Router(dim, self.num_experts)
        self.experts = nn.ModuleList(
            SwiGlu(dim, moe["expert_hidden"]) for _ in range(self.num_experts))
        shared = moe["shared_expert_hidden"]
        self.shared_experts = SwiGlu(dim, shared) if shared else None

    def forward(self, x):
        """[B, T, D] → ([B, T, D], the balance loss or None)."""
        b, t, d = x.shape
        tokens = x.reshape(b * t, d)  # the routing pool is the whole batch
        scores = self.gate(tokens).softmax(dim=-1)  # [N, E]
        weights, chosen = scores.topk(self.top_k, dim=-1)  # [N, k] each
        # The reference's training path: one row per (token, slot), each expert applied to
        # the rows routed to it, one expert after the other.
        rows = tokens.repeat_interleave(self.top_k, dim=0)  # [N·k, D]
        row_expert = chosen.reshape(-1)
        out = torch.empty_like(rows)
        for e, expert in enumerate(self.experts):
            mine = row_expert == e
            out[mine] = expert(rows[mine])
        y = (out.view(b * t, self.top_k, d) * weights.unsqueeze(-1)).sum(dim=1)
        if self.shared_experts is not None:
            y = y + self.shared_experts(tokens)
        aux = None
        if self.training and self.alpha > 0:
            # f_i = E·count_i/(N·k) counts assignments (a constant); P̄_i = mean score.
            share = F.one_hot(row_expert, self.num_experts).float().mean(dim=0)
            aux = self.alpha * (scores.mean(dim=0) * share * self.num_experts).sum()
        return y.view(b, t, d), aux


def _adaln(dim, chunks):
    """`adaLN_modulation` = SiLU → Linear(D → chunks·D) (layers/adaln.rs)."""
    return nn.Sequential(nn.SiLU(), nn.Linear(dim, chunks * dim))


class DiTBlock(nn.Module):
    """adaLN-Zero block (dit.rs `DitBlock`): x += gate_msa·Attn(mod(LN(x)));
    x += gate_mlp·FFN(mod(LN(x))), the six chunks in DiT's order."""

    def __init__(self, cfg):
        super().__init__()
        d = cfg["hidden_size"]
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, cfg["num_heads"])
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.is_moe = cfg["moe"] is not None
        if self.is_moe:
            self.moe = TokenChoiceMoe(d, cfg["moe"])
        else:
            self.mlp = Mlp(d, mlp_hidden(d, cfg["mlp_ratio"]))
        self.adaLN_modulation = _adaln(d, 6)

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        h = modulate(self.norm2(x), shift_mlp, scale_mlp)
        if self.is_moe:
            ffn, aux = self.moe(h)
        else:
            ffn, aux = self.mlp(h), None
        return x + gate_mlp.unsqueeze(1) * ffn, aux


class FinalLayer(nn.Module):
    """adaLN (shift, scale) → modulate(LN(x)) → Linear(D → p²·C_out) (dit.rs `FinalLayer`)."""

    def __init__(self, dim, patch, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * out_channels)
        self.adaLN_modulation = _adaln(dim, 2)

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """The DiT / DiT-MoE model (dit.rs `Dit`): x [N, C, H, W], t [N], y [N] →
    ([N, C_out, H, W], the summed MoE balance loss or None)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg = model_config(cfg)
        d, p = cfg["hidden_size"], cfg["patch_size"]
        self.patch = p
        self.out_channels = cfg["in_channels"] * (2 if cfg["learn_sigma"] else 1)
        grid = cfg["input_size"] // p
        self.x_embedder = PatchEmbed(cfg["in_channels"], d, p)
        # A buffer, not a parameter: fixed, saved in the state_dict as `pos_embed`.
        self.register_buffer("pos_embed", torch.from_numpy(sincos_pos_embed_2d(d, grid))[None])
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(cfg["num_classes"], d, cfg["class_dropout_prob"])
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg["depth"]))
        self.final_layer = FinalLayer(d, p, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self):
        """DiT's init (SPEC §1): xavier-uniform Linear weights and zero biases, the patch conv
        as a Linear, N(0, 0.02) label table and timestep MLP, zero adaLN and final layer."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        zeroed = [b.adaLN_modulation[-1] for b in self.blocks]
        zeroed += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for layer in zeroed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x):
        """[N, T, p·p·C] → [N, C, H, W], each token laid out (patch row, patch column,
        channel) (layers/patch.rs `unpatchify`)."""
        n, t, _ = x.shape
        g, p, c = math.isqrt(t), self.patch, self.out_channels
        x = x.reshape(n, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(n, c, g * p, g * p)

    def forward(self, x, t, y, drop_labels=False):
        h = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, drop=drop_labels)
        aux_total = None
        for block in self.blocks:
            h, aux = block(h, c)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
        return self.unpatchify(self.final_layer(h, c)), aux_total


def parameter_count(model):
    """Trainable parameters (the fixed pos_embed excluded), as `ditmoe zoo` counts them."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
