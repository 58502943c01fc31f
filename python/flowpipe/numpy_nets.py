"""NumPy forward passes of the flowpipe architectures (images are (N, C, H, W)).

Everything is computed in float64 from the stored float32 weights. The time features alone
round their arguments to float32 the way the tools do (t is a float32 column there and the
angles 1000 t omega of the DiT reach hundreds of radians, where float32 rounding shows), so the
outputs agree with `eval-field` to float32 accuracy.
"""

import math

import numpy as np

from .config import resolve

F32 = np.float32

# ---------------------------------------------------------------- primitives


def linear(x, w, b=None):
    """x W^T + b (nn.Linear), over the last axis."""
    y = x @ w.T
    return y if b is None else y + b


def silu(x):
    return x * (0.5 * (1.0 + np.tanh(0.5 * x)))  # x sigmoid(x), overflow-free


_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x):
    """The error function, elementwise (math.erf: exact to double precision)."""
    x = np.asarray(x, dtype=np.float64)
    return _erf(x).astype(np.float64) if x.size else x.copy()


def gelu(x):
    """Exact GELU, x Phi(x) = x (1 + erf(x / sqrt 2)) / 2."""
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


ACTIVATIONS = {"silu": silu, "relu": lambda x: np.maximum(x, 0.0), "tanh": np.tanh, "gelu": gelu}


def rms_norm(x, eps=1e-6):
    """x / sqrt(mean(x^2) + eps) over the last axis, no gain."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def group_norm(x, groups, weight, bias, eps=1e-5):
    """GroupNorm over (N, C, H, W): moments over each group's channels and pixels (biased)."""
    n, c, h, w = x.shape
    g = x.reshape(n, groups, c // groups, h, w)
    mean = g.mean(axis=(2, 3, 4), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(2, 3, 4), keepdims=True)
    y = ((g - mean) / np.sqrt(var + eps)).reshape(n, c, h, w)
    return y * weight[None, :, None, None] + bias[None, :, None, None]


def conv2d(x, w, b=None, stride=1, padding=None):
    """nn.Conv2d on (N, C, H, W) with weights (O, C, k, k), zero padding (default k // 2: 1 for
    the 3x3 kernels) and a stride (2 halves the size, rounding up)."""
    n, c, h, wd = x.shape
    o, c_w, k, _ = w.shape
    if c != c_w:
        raise ValueError(f"conv expects {c_w} input channels, got {c}")
    p = (k // 2) if padding is None else padding
    ho = (h + 2 * p - k) // stride + 1
    wo = (wd + 2 * p - k) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
    y = np.zeros((n, o, ho, wo), dtype=np.result_type(x, w))
    for a in range(k):
        for bb in range(k):
            patch = xp[:, :, a : a + stride * (ho - 1) + 1 : stride, bb : bb + stride * (wo - 1) + 1 : stride]
            y += np.einsum("nchw,oc->nohw", patch, w[:, :, a, bb], optimize=True)
    if b is not None:
        y += b[None, :, None, None]
    return y


def upsample2(x, size):
    """Nearest upsampling by 2 of (N, C, H, W), cropped to size = (H', W') (the top-left part)."""
    y = np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)
    return y[:, :, : size[0], : size[1]]


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def self_attention(qkv, heads):
    """softmax(q k^T / sqrt(d_h)) v per head for qkv (N, L, 3D) = [q | k | v]: (N, L, D)."""
    n, l, d3 = qkv.shape
    d = d3 // 3
    dh = d // heads
    q, k, v = (qkv[:, :, i * d : (i + 1) * d].reshape(n, l, heads, dh).transpose(0, 2, 1, 3) for i in range(3))
    att = softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh))
    return (att @ v).transpose(0, 2, 1, 3).reshape(n, l, d)


# ---------------------------------------------------------------- time and label features


def time_column(t, n):
    """t (N,), (N, 1) or one value as float32 (N,) (the tools' time column)."""
    t = np.asarray(t, dtype=F32).reshape(-1)
    if t.size == 1:
        return np.full(n, t[0], dtype=F32)
    if t.size != n:
        raise ValueError(f"expected {n} times (one per row) or one, got {t.size}")
    return t


def harmonics(t32, k):
    """[sin(2 pi j t), cos(2 pi j t)] for j = 1..k: (N, 2k) (the MLP's time features)."""
    if k == 0:
        return np.zeros((t32.shape[0], 0))
    f = (F32(2.0) * F32(math.pi)) * np.arange(1, k + 1, dtype=F32)
    arg = (t32[:, None] * f[None, :]).astype(np.float64)
    return np.concatenate([np.sin(arg), np.cos(arg)], axis=1)


def sinusoidal(t32, dim, scale=1000.0):
    """[cos(S t omega_k), sin(S t omega_k)], omega_k = 10000^(-k / half), S the time scale:
    (N, dim)."""
    half = dim // 2
    k = np.arange(half, dtype=F32)
    e = (-F32(math.log(10000.0)) * k) / F32(half) if half else k
    freqs = F32(scale) * np.exp(e.astype(np.float64)).astype(F32)
    arg = (t32[:, None] * freqs[None, :]).astype(np.float64)
    parts = [np.cos(arg), np.sin(arg)]
    if dim % 2:
        parts.append(np.zeros((t32.shape[0], 1)))
    return np.concatenate(parts, axis=1)


def fourier(t32, weights):
    """sqrt(2) [sin(2 pi w t), cos(2 pi w t)] with the stored frequencies w (1, dim / 2)."""
    w = np.asarray(weights, dtype=F32).reshape(1, -1)
    arg = ((t32[:, None] * w) * F32(2.0 * math.pi)).astype(np.float64)
    return math.sqrt(2.0) * np.concatenate([np.sin(arg), np.cos(arg)], axis=1)


def label_ids(y, n, num_classes):
    """Labels (N,) in 0..num_classes (num_classes: the null label); None: all null."""
    if y is None:
        return np.full(n, num_classes, dtype=np.int64)
    y = np.asarray(y)
    if y.ndim == 0:
        y = np.full(n, int(y), dtype=np.int64)
    y = y.reshape(-1)
    if y.size != n:
        raise ValueError(f"expected {n} labels (one per sample), got shape {np.shape(y)}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {y.dtype}")
    bad = y[(y < 0) | (y > num_classes)]
    if bad.size:
        if num_classes == 0:
            raise ValueError(f"label {bad[0]} given to an unconditional model (it takes only the null label 0)")
        raise ValueError(f"label {bad[0]} out of range: classes are 0..{num_classes - 1}, {num_classes} is the null label")
    return y.astype(np.int64)


# ---------------------------------------------------------------- architectures


class _W:
    """Float64 views of the tensors, by name."""

    def __init__(self, tensors):
        self._t = tensors
        self._cache = {}

    def __call__(self, name):
        v = self._cache.get(name)
        if v is None:
            v = np.asarray(self._t[name], dtype=np.float64)
            self._cache[name] = v
        return v

    def lin(self, name, x):
        return linear(x, self(f"{name}.weight"), self(f"{name}.bias"))

    def conv(self, name, x, stride=1, padding=None):
        return conv2d(x, self(f"{name}.weight"), self(f"{name}.bias"), stride, padding)

    def gn(self, name, x, groups):
        return group_norm(x, groups, self(f"{name}.weight"), self(f"{name}.bias"))


def _check_x(x, shape, arch):
    x = np.asarray(x)
    if x.ndim != len(shape) + 1 or list(x.shape[1:]) != list(shape):
        want = ", ".join(["N"] + [str(s) for s in shape])
        raise ValueError(f"the {arch} expects x of shape ({want}), got {x.shape}")
    return x.astype(F32).astype(np.float64)


def mlp_forward(cfg, W, x, t, y=None):
    n = x.shape[0]
    t32 = time_column(t, n)
    act = ACTIVATIONS[cfg["activation"]]
    parts = [x, t32[:, None].astype(np.float64), harmonics(t32, cfg["time_features"])]
    if cfg["arch"] == "cmlp":
        parts.append(W("label_embed.weight")[label_ids(y, n, cfg["num_classes"])])
    else:
        label_ids(y, n, 0)
    h = np.concatenate(parts, axis=1)
    for i in range(len(cfg["hidden"])):
        h = act(W.lin(f"layers.{i}", h))
    return W.lin("out", h)


def _unet_res(W, name, x, t_emb, y_emb, groups):
    cond = W.lin(f"{name}.time_adapter.1", silu(W.lin(f"{name}.time_adapter.0", t_emb)))
    if y_emb is not None:
        cond = cond + W.lin(f"{name}.label_adapter.1", silu(W.lin(f"{name}.label_adapter.0", y_emb)))
    h = W.conv(f"{name}.conv1", silu(W.gn(f"{name}.norm1", x, groups))) + cond[:, :, None, None]
    return x + W.conv(f"{name}.conv2", silu(W.gn(f"{name}.norm2", h, groups)))


def unet_forward(cfg, W, x, t, y=None):
    n = x.shape[0]
    g, blocks, levels = cfg["groups"], cfg["blocks_per_level"], len(cfg["channels"])
    t_emb = fourier(time_column(t, n), W("time_embed.weights"))
    ids = label_ids(y, n, cfg["num_classes"])
    y_emb = W("label_embed.weight")[ids] if cfg["num_classes"] else None
    h = silu(W.gn("init_norm", W.conv("init_conv", x), g))
    skips = []
    for l in range(levels - 1):
        for j in range(blocks):
            h = _unet_res(W, f"down.{l}.res.{j}", h, t_emb, y_emb, g)
        size = h.shape[2:]
        h = W.conv(f"down.{l}.conv", h, stride=2)
        skips.append((h, size))
    for j in range(blocks):
        h = _unet_res(W, f"mid.res.{j}", h, t_emb, y_emb, g)
    for l in reversed(range(levels - 1)):
        skip, size = skips.pop()
        h = W.conv(f"up.{l}.conv", upsample2(h + skip, size))
        for j in range(blocks):
            h = _unet_res(W, f"up.{l}.res.{j}", h, t_emb, y_emb, g)
    return W.conv("final_conv", h)


def _modulate(z, m, i, d):
    shift, scale = m[:, i * d : (i + 1) * d], m[:, (i + 1) * d : (i + 2) * d]
    return rms_norm(z) * (1.0 + scale[:, None, :]) + shift[:, None, :]


def _dit_condition(cfg, W, t, y, n):
    """SiLU(TimeMlp(t) + E(y)): the adaLN input of the dit and the token transformer, (N, D)."""
    t32 = time_column(t, n)
    cond = W.lin("time_embed.1", silu(W.lin("time_embed.0", sinusoidal(t32, cfg["time_features"], cfg.get("time_scale", 1000.0)))))
    ids = label_ids(y, n, cfg["num_classes"])
    if cfg["num_classes"]:
        cond = cond + W("label_embed.weight")[ids]
    return silu(cond)


def _dit_trunk(cfg, W, z, c_act):
    """The adaLN-Zero blocks on tokens z (N, L, D), then the final modulation: (N, L, D)."""
    d = cfg["width"]
    act = ACTIVATIONS[cfg["activation"]]
    for i in range(cfg["depth"]):
        b = f"blocks.{i}"
        m = W.lin(f"{b}.modulation", c_act)  # (N, 6D): s1, a1, g1, s2, a2, g2
        hh = _modulate(z, m, 0, d)
        z = z + m[:, None, 2 * d : 3 * d] * W.lin(f"{b}.proj", self_attention(W.lin(f"{b}.qkv", hh), cfg["heads"]))
        hh = _modulate(z, m, 3, d)
        z = z + m[:, None, 5 * d : 6 * d] * W.lin(f"{b}.fc2", act(W.lin(f"{b}.fc1", hh)))
    m = W.lin("final.modulation", c_act)  # (N, 2D): s, a
    return _modulate(z, m, 0, d)


def dit_forward(cfg, W, x, t, y=None):
    n = x.shape[0]
    c, h, w = cfg["data_shape"]
    p, d = cfg["patch_size"], cfg["width"]
    act = ACTIVATIONS[cfg["activation"]]
    c_act = _dit_condition(cfg, W, t, y, n)
    # Patches in row-major order: token r * (W / p) + s is the patch at (r, s).
    z = W.conv("patchify", x, stride=p, padding=0)  # (N, D, H/p, W/p)
    z = z.transpose(0, 2, 3, 1).reshape(n, -1, d) + W("pos_embed")
    hh = _dit_trunk(cfg, W, z, c_act)
    patches = W.lin("final.fc2", act(W.lin("final.fc1", hh)))  # (N, L, p p C), (p_row, p_col, C)
    img = patches.reshape(n, h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)
    return W.conv("final_conv", img.transpose(0, 3, 1, 2))


FIELD_FORWARDS = {"mlp": mlp_forward, "cmlp": mlp_forward, "unet": unet_forward, "dit": dit_forward}


def field_forward(config, tensors, x, t, y=None, dtype=F32):
    """The raw network output of a vector-field model (mlp, cmlp, unet, dit) at x, t, y."""
    cfg = resolve(config)
    arch = cfg["arch"]
    if arch not in FIELD_FORWARDS:
        raise ValueError(f"a {arch} is not a vector-field network (mlp, cmlp, unet, dit)")
    if arch == "unet":  # any H, W
        x = np.asarray(x)
        c = cfg["data_shape"][0]
        if x.ndim != 4 or x.shape[1] != c:
            raise ValueError(f"the unet expects x (N, {c}, H, W), got {x.shape}")
        xx = x.astype(F32).astype(np.float64)
    else:
        xx = _check_x(x, cfg["data_shape"], arch)
    return FIELD_FORWARDS[arch](cfg, _W(tensors), xx, t, y).astype(dtype)


# ---------------------------------------------------------------- token transformer


def denoiser_logits(config, tensors, x, t, y=None, dtype=F32):
    """The token transformer's raw logits (N, L, K) over the K data symbols at token ids x (N, L)
    (int, [MASK] = K allowed), t (N,) or one value, labels y: what `eval-field` writes for a
    denoiser (notes section 8.3)."""
    cfg = resolve(config)
    if cfg["arch"] != "token-transformer":
        raise ValueError(f"a {cfg['arch']} is not a discrete denoiser (token-transformer)")
    x = np.asarray(x)
    n, l = (x.shape + (0, 0))[:2]
    if x.ndim != 2 or l != cfg["seq_len"] or not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"the token-transformer expects integer tokens (N, {cfg['seq_len']}), got {x.dtype} {x.shape}")
    if x.size and (x.min() < 0 or x.max() >= cfg["symbols"]):
        raise ValueError(f"token ids must be in 0..{cfg['symbols'] - 1} ([MASK] last), found {x.min()}..{x.max()}")
    W = _W(tensors)
    c_act = _dit_condition(cfg, W, t, y, n)
    h = W("token_embed")[x] + W("pos_embed")
    return W.lin("head", _dit_trunk(cfg, W, h, c_act)).astype(dtype)


# ---------------------------------------------------------------- VAE

LOGVAR_RANGE = (-30.0, 20.0)


def _vae_res(W, name, x, g):
    h = W.conv(f"{name}.conv1", silu(W.gn(f"{name}.norm1", x, g)))
    return x + W.conv(f"{name}.conv2", silu(W.gn(f"{name}.norm2", h, g)))


def _vae_mid(cfg, W, name, x):
    g = cfg["groups"]
    h = _vae_res(W, f"{name}.res0", x, g)
    if cfg["attention"]:
        n, c, hh, ww = h.shape
        tokens = W.gn(f"{name}.attn.norm", h, g).reshape(n, c, hh * ww).transpose(0, 2, 1)
        a = W.lin(f"{name}.attn.attn.proj", self_attention(W.lin(f"{name}.attn.attn.qkv", tokens), 1))
        h = h + a.transpose(0, 2, 1).reshape(n, c, hh, ww)
    return _vae_res(W, f"{name}.res1", h, g)


def vae_posterior(config, tensors, x, dtype=F32):
    """The encoder's posterior over unscaled latents: (mean, logvar), each (N, k, h, w)."""
    cfg = resolve(config)
    W, g, ch = _W(tensors), cfg["groups"], cfg["channels"]
    h = W.conv("encoder.conv_in", _check_x(x, cfg["data_shape"], "vae"))
    for l in range(len(ch)):
        for j in range(cfg["blocks_per_level"]):
            h = _vae_res(W, f"encoder.down.{l}.res.{j}", h, g)
        if l + 1 < len(ch):
            h = W.conv(f"encoder.down.{l}.conv", h, stride=2)
    h = silu(W.gn("encoder.norm_out", _vae_mid(cfg, W, "encoder.mid", h), g))
    mean = W.conv("encoder.mean", h)
    if cfg["logvar"] == "per-element":
        logvar = W.conv("encoder.logvar", h)
    else:
        logvar = np.broadcast_to(W("encoder.logvar").reshape(1, 1, 1, 1), mean.shape)
    logvar = np.clip(logvar, *LOGVAR_RANGE)
    return mean.astype(dtype), logvar.astype(dtype)


def vae_decode(config, tensors, z, dtype=F32):
    """The decoder mean D(z) for unscaled latents z (N, k, h, w): (N, C, H, W)."""
    cfg = resolve(config)
    W, g, ch = _W(tensors), cfg["groups"], cfg["channels"]
    sizes = [tuple(cfg["data_shape"][1:])]
    for _ in ch[1:]:
        sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
    h = W.conv("decoder.conv_in", _check_x(z, cfg["latent_shape"], "vae decoder"))
    h = _vae_mid(cfg, W, "decoder.mid", h)
    for l in reversed(range(len(ch))):
        for j in range(cfg["blocks_per_level"]):
            h = _vae_res(W, f"decoder.up.{l}.res.{j}", h, g)
        if l > 0:
            h = W.conv(f"decoder.up.{l}.conv", upsample2(h, sizes[l - 1]))
    h = silu(W.gn("decoder.norm_out", h, g))
    return W.conv("decoder.conv_out", h).astype(dtype)


# ---------------------------------------------------------------- classifier


def cnn_features(config, tensors, x, dtype=F32):
    """The penultimate features f(x) (N, features) of the `cnn` classifier."""
    cfg = resolve(config)
    W = _W(tensors)
    h = _check_x(x, cfg["data_shape"], "classifier")
    for l in range(len(cfg["channels"])):
        h = silu(W.gn(f"levels.{l}.norm", W.conv(f"levels.{l}.conv", h, stride=2), cfg["groups"]))
    flat = h.transpose(0, 2, 3, 1).reshape(h.shape[0], -1)  # (H, W, C) order, channels last
    return silu(W.lin("hidden", flat)).astype(dtype)


def cnn_logits(config, tensors, x, dtype=F32):
    """The class logits (N, num_classes) of the `cnn` classifier."""
    f = cnn_features(config, tensors, x, dtype=np.float64)
    return _W(tensors).lin("head", f).astype(dtype)
