"""PyTorch modules of the flowpipe architectures, mirroring numpy_nets.py.

Parameter names (`state_dict()` keys) are the model file's tensor names, so a module's weights
save as they are and a file's tensors load with `load_state_dict(..., strict=True)`:

    from flowpipe.torch_nets import build, tensors_of
    net = build(config)                     # fresh weights (the trainer's initialisation)
    net = build(config, model.tensors)      # a loaded file's weights
    flowpipe.save(path, config, tensors_of(net))

Vector fields (mlp, cmlp, unet, dit): `net(x, t, y=None)` with x (N, ...data_shape), t (N,),
(N, 1) or a number, y (N,) long labels or None (the null label, num_classes): the raw output,
shaped like x. Token transformer: `net(x, t, y=None)` with token ids x (N, L) gives the logits
(N, L, K). VAE: `net.posterior(x)`, `net.encode(x)` (scaled means), `net.decode(z)`
(scaled latents in). Classifier: `net(x)` gives the logits, `net.features(x)` the features.

python/tests/test_forward.py checks these modules against the tools wherever PyTorch imports
(CI has no PyTorch and checks the NumPy forwards); bench/torch_reference.py times them against
run-bench (make bench-compare).
"""

import math

import numpy as np

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as e:  # pragma: no cover
    raise ImportError("flowpipe.torch_nets needs PyTorch (pip install torch); the rest of flowpipe does not") from e

from .config import resolve

# ---------------------------------------------------------------- helpers


def _time(t, n, device):
    t = torch.as_tensor(t, dtype=torch.float32, device=device).reshape(-1)
    if t.numel() == 1:
        return t.expand(n)
    if t.numel() != n:
        raise ValueError(f"expected {n} times (one per row) or one, got {t.numel()}")
    return t


def _labels(y, n, num_classes, device):
    if y is None:
        return torch.full((n,), num_classes, dtype=torch.long, device=device)
    y = torch.as_tensor(y, device=device).long().reshape(-1)
    if y.numel() == 1:
        y = y.expand(n)
    if y.numel() != n:
        raise ValueError(f"expected {n} labels (one per sample), got {y.numel()}")
    return y


def harmonics(t, k):
    """[sin(2 pi j t), cos(2 pi j t)] for j = 1..k: (N, 2k)."""
    f = 2.0 * math.pi * torch.arange(1, k + 1, dtype=t.dtype, device=t.device)
    arg = t[:, None] * f[None, :]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


def sinusoidal(t, dim, scale=1000.0):
    """[cos(S t omega_k), sin(S t omega_k)], omega_k = 10000^(-k / half), S the time scale:
    (N, dim)."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = scale * torch.exp(-math.log(10000.0) * k / max(half, 1))
    arg = t[:, None] * freqs[None, :]
    parts = [torch.cos(arg), torch.sin(arg)]
    if dim % 2:
        parts.append(torch.zeros_like(t)[:, None])
    return torch.cat(parts, dim=1)


def rms_norm(x, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


def self_attention(qkv, heads):
    """softmax(q k^T / sqrt(d_h)) v per head, qkv (N, L, 3D) = [q | k | v] -> (N, L, D)."""
    n, l, d3 = qkv.shape
    d = d3 // 3
    dh = d // heads
    q, k, v = qkv.reshape(n, l, 3, heads, dh).permute(2, 0, 3, 1, 4)  # each (N, heads, L, dh)
    # PyTorch's fused kernel computes exactly this (scale 1 / sqrt(d_h), no mask).
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, l, d)


def _act(name):
    return {"silu": F.silu, "relu": F.relu, "tanh": torch.tanh, "gelu": F.gelu}[name]


def conv3(c_in, c_out, stride=1):
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)


def upsample2(x, size):
    """Nearest upsampling by 2, cropped to size (the top-left part)."""
    return F.interpolate(x, scale_factor=2, mode="nearest")[:, :, : size[0], : size[1]]


def _zero(module):
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module


def _adapter(dim, channels):
    return nn.ModuleList([nn.Linear(dim, dim), nn.Linear(dim, channels)])


def _run_adapter(a, e):
    return a[1](F.silu(a[0](e)))


# ---------------------------------------------------------------- mlp, cmlp


class Mlp(nn.Module):
    """`mlp` and `cmlp`: [x, t, sin(2 pi k t).., cos(2 pi k t).. (, e(y))] -> hidden -> D."""

    def __init__(self, config):
        super().__init__()
        self.config = cfg = resolve(config)
        d = cfg["data_shape"][0]
        width = d + 1 + 2 * cfg["time_features"]
        self.num_classes = cfg["num_classes"] if cfg["arch"] == "cmlp" else 0
        if cfg["arch"] == "cmlp":
            self.label_embed = nn.Embedding(cfg["num_classes"] + 1, cfg["label_embed_dim"])
            width += cfg["label_embed_dim"]
        layers = []
        for h in cfg["hidden"]:
            layers.append(nn.Linear(width, h))
            width = h
        self.layers = nn.ModuleList(layers)
        self.out = nn.Linear(width, d)
        self.act = _act(cfg["activation"])

    def forward(self, x, t, y=None):
        n = x.shape[0]
        t = _time(t, n, x.device).to(x.dtype)
        parts = [x, t[:, None]]
        if self.config["time_features"]:
            parts.append(harmonics(t, self.config["time_features"]))
        if self.num_classes:
            parts.append(self.label_embed(_labels(y, n, self.num_classes, x.device)))
        h = torch.cat(parts, dim=1)
        for layer in self.layers:
            h = self.act(layer(h))
        return self.out(h)


# ---------------------------------------------------------------- unet


class FourierFeatures(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weights = nn.Parameter(torch.randn(1, dim // 2))

    def forward(self, t):
        arg = 2.0 * math.pi * t[:, None] * self.weights
        return math.sqrt(2.0) * torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class UNetResidual(nn.Module):
    def __init__(self, c, cfg):
        super().__init__()
        g = cfg["groups"]
        self.norm1 = nn.GroupNorm(g, c, eps=1e-5)
        self.conv1 = conv3(c, c)
        self.norm2 = nn.GroupNorm(g, c, eps=1e-5)
        self.conv2 = conv3(c, c)
        self.time_adapter = _adapter(cfg["time_embed_dim"], c)
        self.label_adapter = _adapter(cfg["label_embed_dim"], c) if cfg["num_classes"] else None

    def forward(self, x, t_emb, y_emb):
        cond = _run_adapter(self.time_adapter, t_emb)
        if self.label_adapter is not None:
            cond = cond + _run_adapter(self.label_adapter, y_emb)
        h = self.conv1(F.silu(self.norm1(x))) + cond[:, :, None, None]
        return x + self.conv2(F.silu(self.norm2(h)))


class _Level(nn.Module):
    """Residual layers `res.<j>` and a convolution `conv` (None where a level has none)."""

    def __init__(self, res, conv=None):
        super().__init__()
        self.res = nn.ModuleList(res)
        self.conv = conv


class UNet(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = cfg = resolve(config)
        c_in, ch, b = cfg["data_shape"][0], cfg["channels"], cfg["blocks_per_level"]
        self.num_classes = cfg["num_classes"]
        self.time_embed = FourierFeatures(cfg["time_embed_dim"])
        if self.num_classes:
            self.label_embed = nn.Embedding(self.num_classes + 1, cfg["label_embed_dim"])
        self.init_conv = conv3(c_in, ch[0])
        self.init_norm = nn.GroupNorm(cfg["groups"], ch[0], eps=1e-5)
        res = lambda c: [UNetResidual(c, cfg) for _ in range(b)]  # noqa: E731
        self.down = nn.ModuleList([_Level(res(ch[l]), conv3(ch[l], ch[l + 1], stride=2)) for l in range(len(ch) - 1)])
        self.mid = _Level(res(ch[-1]))
        self.up = nn.ModuleList([_Level(res(ch[l]), conv3(ch[l + 1], ch[l])) for l in range(len(ch) - 1)])
        self.final_conv = conv3(ch[0], c_in)

    def forward(self, x, t, y=None):
        n = x.shape[0]
        t_emb = self.time_embed(_time(t, n, x.device).to(x.dtype))
        y_emb = self.label_embed(_labels(y, n, self.num_classes, x.device)) if self.num_classes else None
        h = F.silu(self.init_norm(self.init_conv(x)))
        skips = []
        for level in self.down:
            for r in level.res:
                h = r(h, t_emb, y_emb)
            size = h.shape[2:]
            h = level.conv(h)
            skips.append((h, size))
        for r in self.mid.res:
            h = r(h, t_emb, y_emb)
        for level in reversed(self.up):
            skip, size = skips.pop()
            h = level.conv(upsample2(h + skip, size))
            for r in level.res:
                h = r(h, t_emb, y_emb)
        return self.final_conv(h)


# ---------------------------------------------------------------- dit


class Attention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.heads = heads

    def forward(self, x):
        return self.proj(self_attention(self.qkv(x), self.heads))


def _modulate(z, m, i, d):
    shift, scale = m[:, i * d : (i + 1) * d], m[:, (i + 1) * d : (i + 2) * d]
    return rms_norm(z) * (1 + scale[:, None, :]) + shift[:, None, :]


class DitBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, r = cfg["width"], cfg["mlp_ratio"]
        self.modulation = _zero(nn.Linear(d, 6 * d))  # adaLN-Zero
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc1 = nn.Linear(d, r * d)
        self.fc2 = nn.Linear(r * d, d)
        self.heads, self.width, self.act = cfg["heads"], d, _act(cfg["activation"])

    def forward(self, z, c_act):
        d = self.width
        m = self.modulation(c_act)  # s1, a1, g1, s2, a2, g2
        h = _modulate(z, m, 0, d)
        z = z + m[:, None, 2 * d : 3 * d] * self.proj(self_attention(self.qkv(h), self.heads))
        h = _modulate(z, m, 3, d)
        return z + m[:, None, 5 * d : 6 * d] * self.fc2(self.act(self.fc1(h)))


class _Final(nn.Module):
    def __init__(self, d, out):
        super().__init__()
        self.modulation = _zero(nn.Linear(d, 2 * d))
        self.fc1 = nn.Linear(d, d)
        self.fc2 = nn.Linear(d, out)


class Dit(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = cfg = resolve(config)
        c, h, w = cfg["data_shape"]
        p, d = cfg["patch_size"], cfg["width"]
        self.num_classes = cfg["num_classes"]
        self.patchify = nn.Conv2d(c, d, p, stride=p)
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, (h // p) * (w // p), d))
        self.time_embed = nn.ModuleList([nn.Linear(cfg["time_features"], d), nn.Linear(d, d)])
        if self.num_classes:
            self.label_embed = nn.Embedding(self.num_classes + 1, d)
        self.blocks = nn.ModuleList([DitBlock(cfg) for _ in range(cfg["depth"])])
        self.final = _Final(d, p * p * c)
        self.final_conv = conv3(c, c)
        self.act = _act(cfg["activation"])

    def forward(self, x, t, y=None):
        cfg = self.config
        n = x.shape[0]
        c, h, w = cfg["data_shape"]
        p, d = cfg["patch_size"], cfg["width"]
        t = _time(t, n, x.device)
        cond = self.time_embed[1](F.silu(self.time_embed[0](sinusoidal(t, cfg["time_features"], cfg.get("time_scale", 1000.0)).to(x.dtype))))
        if self.num_classes:
            cond = cond + self.label_embed(_labels(y, n, self.num_classes, x.device))
        c_act = F.silu(cond)
        z = self.patchify(x).flatten(2).transpose(1, 2) + self.pos_embed  # (N, L, D), row-major
        for block in self.blocks:
            z = block(z, c_act)
        m = self.final.modulation(c_act)  # s, a
        patches = self.final.fc2(self.act(self.final.fc1(_modulate(z, m, 0, d))))
        img = patches.reshape(n, h // p, w // p, p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)
        return self.final_conv(img.permute(0, 3, 1, 2))


# ---------------------------------------------------------------- token transformer


class _FinalModulation(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.modulation = _zero(nn.Linear(d, 2 * d))


class TokenTransformer(nn.Module):
    """Discrete diffusion's denoiser: `net(x, t, y=None)` with token ids x (N, L) long gives the
    raw logits (N, L, K) over the K data symbols, as `eval-field` writes them."""

    def __init__(self, config):
        super().__init__()
        self.config = cfg = resolve(config)
        d = cfg["width"]
        self.num_classes = cfg["num_classes"]
        self.token_embed = nn.Parameter(0.02 * torch.randn(cfg["symbols"], d))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, cfg["seq_len"], d))
        self.time_embed = nn.ModuleList([nn.Linear(cfg["time_features"], d), nn.Linear(d, d)])
        if self.num_classes:
            self.label_embed = nn.Embedding(self.num_classes + 1, d)
        self.blocks = nn.ModuleList([DitBlock(cfg) for _ in range(cfg["depth"])])
        self.final = _FinalModulation(d)
        self.head = nn.Linear(d, cfg["symbols"] - 1)

    def forward(self, x, t, y=None):
        cfg = self.config
        x = torch.as_tensor(x).long()
        n = x.shape[0]
        t = _time(t, n, x.device)
        features = sinusoidal(t, cfg["time_features"]).to(self.pos_embed.dtype)
        cond = self.time_embed[1](F.silu(self.time_embed[0](features)))
        if self.num_classes:
            cond = cond + self.label_embed(_labels(y, n, self.num_classes, x.device))
        c_act = F.silu(cond)
        z = self.token_embed[x] + self.pos_embed
        for block in self.blocks:
            z = block(z, c_act)
        return self.head(_modulate(z, self.final.modulation(c_act), 0, cfg["width"]))


# ---------------------------------------------------------------- vae


class VaeResidual(nn.Module):
    def __init__(self, c, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c, eps=1e-5)
        self.conv1 = conv3(c, c)
        self.norm2 = nn.GroupNorm(groups, c, eps=1e-5)
        self.conv2 = _zero(conv3(c, c))

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class VaeAttention(nn.Module):
    def __init__(self, c, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c, eps=1e-5)
        self.attn = Attention(c, 1)
        _zero(self.attn.proj)

    def forward(self, x):
        n, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (N, HW, C)
        return x + self.attn(tokens).transpose(1, 2).reshape(n, c, h, w)


class VaeMid(nn.Module):
    def __init__(self, c, cfg):
        super().__init__()
        self.res0 = VaeResidual(c, cfg["groups"])
        self.attn = VaeAttention(c, cfg["groups"]) if cfg["attention"] else None
        self.res1 = VaeResidual(c, cfg["groups"])

    def forward(self, x):
        h = self.res0(x)
        if self.attn is not None:
            h = self.attn(h)
        return self.res1(h)


class VaeEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch, k, g = cfg["channels"], cfg["latent_channels"], cfg["groups"]
        self.conv_in = conv3(cfg["data_shape"][0], ch[0])
        self.down = nn.ModuleList(
            [
                _Level([VaeResidual(c, g) for _ in range(cfg["blocks_per_level"])], conv3(c, ch[l + 1], stride=2) if l + 1 < len(ch) else None)
                for l, c in enumerate(ch)
            ]
        )
        self.mid = VaeMid(ch[-1], cfg)
        self.norm_out = nn.GroupNorm(g, ch[-1], eps=1e-5)
        self.mean = conv3(ch[-1], k)
        if cfg["logvar"] == "per-element":
            self.logvar = conv3(ch[-1], k)
        else:
            self.logvar = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            for r in level.res:
                h = r(h)
            if level.conv is not None:
                h = level.conv(h)
        h = F.silu(self.norm_out(self.mid(h)))
        mean = self.mean(h)
        if isinstance(self.logvar, nn.Module):
            logvar = self.logvar(h)
        else:
            logvar = self.logvar.reshape(1, 1, 1, 1).expand_as(mean)
        return mean, logvar.clamp(-30.0, 20.0)


class VaeDecoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch, k, g = cfg["channels"], cfg["latent_channels"], cfg["groups"]
        self.conv_in = conv3(k, ch[-1])
        self.mid = VaeMid(ch[-1], cfg)
        self.up = nn.ModuleList(
            [_Level([VaeResidual(c, g) for _ in range(cfg["blocks_per_level"])], conv3(c, ch[l - 1]) if l > 0 else None) for l, c in enumerate(ch)]
        )
        self.norm_out = nn.GroupNorm(g, ch[0], eps=1e-5)
        self.conv_out = conv3(ch[0], cfg["data_shape"][0])
        if cfg["decoder_variance"] == "learned":
            self.logvar = nn.Parameter(torch.full((1,), math.log(cfg["decoder_std"] ** 2)))
        sizes = [tuple(cfg["data_shape"][1:])]
        for _ in ch[1:]:
            sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
        self.sizes = sizes

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for l in reversed(range(len(self.up))):
            level = self.up[l]
            for r in level.res:
                h = r(h)
            if level.conv is not None:
                h = level.conv(upsample2(h, self.sizes[l - 1]))
        return self.conv_out(F.silu(self.norm_out(h)))


class Vae(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = cfg = resolve(config)
        self.encoder = VaeEncoder(cfg)
        self.decoder = VaeDecoder(cfg)
        self.scale_factor = cfg["scale_factor"]

    def posterior(self, x):
        """(mean, logvar) over unscaled latents."""
        return self.encoder(x)

    def encode(self, x):
        """scale_factor * posterior mean, as `encode-vae --mean` writes it."""
        return self.scale_factor * self.encoder(x)[0]

    def decode(self, z):
        """The decoder mean of scaled latents, as `decode-vae` reads them."""
        return self.decoder(z / self.scale_factor)

    def forward(self, x):
        return self.posterior(x)


# ---------------------------------------------------------------- cnn


class _CnnLevel(nn.Module):
    def __init__(self, c_in, c, groups):
        super().__init__()
        self.conv = conv3(c_in, c, stride=2)
        self.norm = nn.GroupNorm(groups, c, eps=1e-5)


class Cnn(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = cfg = resolve(config)
        c_prev, h, w = cfg["data_shape"]
        levels = []
        for c in cfg["channels"]:
            levels.append(_CnnLevel(c_prev, c, cfg["groups"]))
            c_prev, h, w = c, -(-h // 2), -(-w // 2)
        self.levels = nn.ModuleList(levels)
        self.hidden = nn.Linear(c_prev * h * w, cfg["features"])
        self.head = nn.Linear(cfg["features"], cfg["num_classes"])

    def features(self, x):
        h = x
        for level in self.levels:
            h = F.silu(level.norm(level.conv(h)))
        return F.silu(self.hidden(h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)))  # (H, W, C) order

    def forward(self, x):
        return self.head(self.features(x))


# ---------------------------------------------------------------- building and saving

MODULES = {"mlp": Mlp, "cmlp": Mlp, "unet": UNet, "dit": Dit, "vae": Vae, "cnn": Cnn, "token-transformer": TokenTransformer}


def build(config, tensors=None):
    """The module of `config` (a model config, or a checkpoint's): fresh weights, or `tensors`
    ({name: array}, e.g. Model.tensors) loaded strictly."""
    from .config import net_config

    cfg = net_config(config)
    arch = cfg.get("arch")
    if arch not in MODULES:
        raise ValueError(f"no PyTorch module for the architecture {arch!r}")
    net = MODULES[arch](cfg)
    if tensors is not None:
        state = {k: torch.from_numpy(np.ascontiguousarray(np.asarray(v, dtype=np.float32))) for k, v in tensors.items()}
        net.load_state_dict(state, strict=True)
    return net


def tensors_of(module, prefix=""):
    """{name: float32 NumPy array} of a module's parameters, ready for flowpipe.save; prefix
    "ema." names the copies of an EMA."""
    return {prefix + k: v.detach().cpu().float().numpy() for k, v in module.state_dict().items()}
