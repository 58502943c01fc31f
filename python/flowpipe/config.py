"""Architecture configs: defaults and the tensor names and shapes each network uses.

Mirrors docs/model-format.md and the Rust sources under lib/nn/: `resolve(config)` fills in the
defaults the tools apply when a field is absent, and `expected_shapes(config)` lists every tensor
the network reads, by name (without the `ema.` prefix), with its shape.
"""

import math

ARCHS = ("mlp", "cmlp", "unet", "dit", "vae", "cnn", "token-transformer")


class ConfigError(ValueError):
    """A config the tools would refuse (a missing required field, sizes that do not fit)."""


def net_config(config):
    """The config that describes the network: a checkpoint's `model`, else the config itself."""
    if config.get("kind") == "checkpoint":
        if not isinstance(config.get("model"), dict):
            raise ConfigError("a checkpoint config needs its model's config under 'model'")
        return config["model"]
    return config


def _sizes(c, key, default=None):
    v = c.get(key)
    if v is None:
        return None if default is None else list(default)
    if not isinstance(v, (list, tuple)) or not all(isinstance(u, int) and u >= 0 for u in v):
        raise ConfigError(f"'{key}' must be a list of sizes, found {v!r}")
    return [int(u) for u in v]


def _size(c, key, default):
    v = c.get(key)
    if v is None:
        return default
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ConfigError(f"'{key}' must be a non-negative integer, found {v!r}")
    return int(v)


def _positive(c, key, default):
    v = _size(c, key, default)
    if v == 0:
        raise ConfigError(f"'{key}' must be positive, found 0")
    return v


def _image_shape(c, arch):
    s = _sizes(c, "data_shape")
    if s is None or len(s) != 3 or min(s) == 0:
        raise ConfigError(f"a {arch} needs data_shape [C, H, W], found {s!r}")
    return s


def default_groups(channels):
    """The largest of 8, 4, 2, 1 dividing every channel count (what the trainers choose)."""
    for g in (8, 4, 2, 1):
        if all(c % g == 0 for c in channels):
            return g
    return 1


def _groups(c, channels, arch):
    """GroupNorm's group count: required (the tensors cannot tell it), dividing every channel."""
    if c.get("groups") is None:
        raise ConfigError(f"the {arch} config has no 'groups' (the GroupNorm group count, dividing every channel count {channels}; its tensors cannot tell it)")
    g = _positive(c, "groups", 1)
    bad = [ch for ch in channels if ch % g]
    if bad:
        raise ConfigError(f"{g} GroupNorm groups do not divide {bad[0]} channels")
    return g


def _transformer(c, arch, width, depth, time_features):
    """The sizes of the DiT blocks (the dit and the token transformer share them), with the
    architecture's defaults; the activation is required."""
    d = _positive(c, "width", width)
    heads = _positive(c, "heads", 4)
    act = c.get("activation")
    if act not in ("gelu", "silu"):
        raise ConfigError(f"the {arch} needs 'activation' gelu or silu, found {act!r}")
    if d % heads:
        raise ConfigError(f"{heads} heads do not divide the width {d}")
    return dict(
        width=d,
        depth=_size(c, "depth", depth),
        heads=heads,
        num_classes=_size(c, "num_classes", 0),
        mlp_ratio=_positive(c, "mlp_ratio", 4),
        time_features=_positive(c, "time_features", time_features),
    )


def resolve(config):
    """A copy of the network's config with every default filled in and the sizes checked.

    Accepts a checkpoint's config (its `model` is resolved). Raises ConfigError where the tools
    would refuse the config.
    """
    c = dict(net_config(config))
    arch = c.get("arch")
    if arch is None:
        raise ConfigError("the model config names no architecture ('arch')")
    if arch in ("mlp", "cmlp"):
        s = _sizes(c, "data_shape")
        if s is None or len(s) != 1 or s[0] == 0:
            raise ConfigError(f"an {arch} needs data_shape [D], found {s!r}")
        hidden = _sizes(c, "hidden")
        if not hidden or 0 in hidden:
            raise ConfigError(f"hidden widths must be positive, found {hidden!r}")
        act = c.get("activation")
        if act not in ("silu", "relu", "tanh"):
            raise ConfigError(f"the {arch} needs 'activation' silu, relu or tanh, found {act!r}")
        c.update(data_shape=s, hidden=hidden, time_features=_size(c, "time_features", 0))
        if arch == "cmlp":
            k = _size(c, "num_classes", 0)
            if k == 0:
                raise ConfigError("a cmlp needs num_classes > 0 (use the mlp when unconditional)")
            c.update(num_classes=k, label_embed_dim=_positive(c, "label_embed_dim", 16))
        else:
            c["num_classes"] = 0
    elif arch == "unet":
        s = _image_shape(c, "unet")
        ch = _sizes(c, "channels", [32, 64, 128])
        if not ch or 0 in ch:
            raise ConfigError(f"unet channels must be positive, found {ch!r}")
        ted = _positive(c, "time_embed_dim", 40)
        if ted % 2:
            raise ConfigError(f"time_embed_dim must be even, found {ted}")
        c.update(
            data_shape=s,
            channels=ch,
            blocks_per_level=_size(c, "blocks_per_level", 2),
            time_embed_dim=ted,
            label_embed_dim=_positive(c, "label_embed_dim", 40),
            num_classes=_size(c, "num_classes", 0),
            groups=_groups(c, ch, "unet"),
        )
    elif arch == "dit":
        s = _image_shape(c, "dit")
        p = _positive(c, "patch_size", 2)
        if s[1] % p or s[2] % p:
            raise ConfigError(f"patch size {p} does not divide the image size {s[1]}x{s[2]}")
        c.update(data_shape=s, patch_size=p, **_transformer(c, "dit", width=256, depth=6, time_features=256))
        scale = c.get("time_scale", 1000.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
            raise ConfigError(f"dit time_scale must be a positive number, found {scale!r}")
        c["time_scale"] = float(scale)
        if c.get("text") is not None:
            raise ConfigError("a dit that reads prompts ('text') is not supported by the Python package yet")
    elif arch == "vae":
        s = _image_shape(c, "vae")
        ch = _sizes(c, "channels", [32, 64, 64])
        if not ch or 0 in ch:
            raise ConfigError(f"vae channels must be positive, found {ch!r}")
        logvar = c.get("logvar", "per-element") or "per-element"
        dec = c.get("decoder_variance", "learned") or "learned"
        if logvar not in ("per-element", "scalar"):
            raise ConfigError(f"'logvar' must be per-element or scalar, found {logvar!r}")
        if dec not in ("learned", "fixed"):
            raise ConfigError(f"'decoder_variance' must be learned or fixed, found {dec!r}")

        def number(key, default):
            v = c.get(key)
            if v is None:
                return default
            if not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
                raise ConfigError(f"'{key}' must be a positive number, found {v!r}")
            return float(v)

        c.update(
            data_shape=s,
            channels=ch,
            blocks_per_level=_size(c, "blocks_per_level", 1),
            latent_channels=_positive(c, "latent_channels", 4),
            attention=bool(c.get("attention") or False),
            groups=_groups(c, ch, "vae"),
            logvar=logvar,
            decoder_variance=dec,
            decoder_std=number("decoder_std", 0.1),
            scale_factor=number("scale_factor", 1.0),
        )
        h, w = s[1], s[2]
        for _ in ch[1:]:
            h, w = -(-h // 2), -(-w // 2)
        c["latent_shape"] = [c["latent_channels"], h, w]
    elif arch == "cnn":
        s = _image_shape(c, "classifier")
        ch = _sizes(c, "channels", [32, 64])
        if not ch or 0 in ch:
            raise ConfigError(f"classifier channels must be positive, found {ch!r}")
        k = c.get("num_classes")
        if not isinstance(k, int) or k < 2:
            raise ConfigError(f"a classifier needs num_classes of at least 2, found {k!r}")
        c.update(
            data_shape=s,
            channels=ch,
            features=_positive(c, "features", 128),
            num_classes=k,
            groups=_groups(c, ch, "classifier"),
        )
    elif arch == "token-transformer":
        vocab = c.get("vocab")
        symbols = vocab.get("symbols") if isinstance(vocab, dict) else None
        if not isinstance(symbols, list) or len(symbols) < 3 or not all(isinstance(s, str) for s in symbols):
            raise ConfigError("a token-transformer needs 'vocab' with 'symbols' (at least two and [MASK])")
        seq_len = _size(c, "seq_len", 0)
        if seq_len == 0:
            raise ConfigError("a token-transformer needs a positive 'seq_len'")
        for key in ("kappa", "noise"):
            if not isinstance(c.get(key), str):
                raise ConfigError(f"a token-transformer needs '{key}' (its probability path), found {c.get(key)!r}")
        sizes = _transformer(c, "token-transformer", width=128, depth=4, time_features=64)
        # symbols: [MASK] included; the logits cover the others
        c.update(seq_len=seq_len, symbols=len(symbols), **sizes)
    else:
        raise ConfigError(f"unknown or unsupported architecture {arch!r} (supported: {', '.join(ARCHS)})")
    return c


def _linear(out, name, d_in, d_out):
    out[f"{name}.weight"] = (d_out, d_in)
    out[f"{name}.bias"] = (d_out,)


def _conv(out, name, c_in, c_out, k=3):
    out[f"{name}.weight"] = (c_out, c_in, k, k)
    out[f"{name}.bias"] = (c_out,)


def _norm(out, name, c):
    out[f"{name}.weight"] = (c,)
    out[f"{name}.bias"] = (c,)


def _unet_res(out, name, c, cfg):
    _norm(out, f"{name}.norm1", c)
    _conv(out, f"{name}.conv1", c, c)
    _norm(out, f"{name}.norm2", c)
    _conv(out, f"{name}.conv2", c, c)
    t = cfg["time_embed_dim"]
    _linear(out, f"{name}.time_adapter.0", t, t)
    _linear(out, f"{name}.time_adapter.1", t, c)
    if cfg["num_classes"]:
        e = cfg["label_embed_dim"]
        _linear(out, f"{name}.label_adapter.0", e, e)
        _linear(out, f"{name}.label_adapter.1", e, c)


def _vae_res(out, name, c):
    _norm(out, f"{name}.norm1", c)
    _conv(out, f"{name}.conv1", c, c)
    _norm(out, f"{name}.norm2", c)
    _conv(out, f"{name}.conv2", c, c)


def _vae_mid(out, name, c, cfg):
    _vae_res(out, f"{name}.res0", c)
    if cfg["attention"]:
        _norm(out, f"{name}.attn.norm", c)
        _linear(out, f"{name}.attn.attn.qkv", c, 3 * c)
        _linear(out, f"{name}.attn.attn.proj", c, c)
    _vae_res(out, f"{name}.res1", c)


def _dit_trunk(out, cfg):
    """The time MLP, label embedding, adaLN-Zero blocks and final modulation of the dit and the
    token transformer."""
    d, r = cfg["width"], cfg["mlp_ratio"]
    _linear(out, "time_embed.0", cfg["time_features"], d)
    _linear(out, "time_embed.1", d, d)
    if cfg["num_classes"]:
        out["label_embed.weight"] = (cfg["num_classes"] + 1, d)
    for i in range(cfg["depth"]):
        _linear(out, f"blocks.{i}.modulation", d, 6 * d)
        _linear(out, f"blocks.{i}.qkv", d, 3 * d)
        _linear(out, f"blocks.{i}.proj", d, d)
        _linear(out, f"blocks.{i}.fc1", d, r * d)
        _linear(out, f"blocks.{i}.fc2", r * d, d)
    _linear(out, "final.modulation", d, 2 * d)


def expected_shapes(config):
    """{tensor name: shape} of every tensor the network of `config` uses (no `ema.` prefix)."""
    cfg = resolve(config)
    arch = cfg["arch"]
    out = {}
    if arch in ("mlp", "cmlp"):
        d = cfg["data_shape"][0]
        width = d + 1 + 2 * cfg["time_features"]
        if arch == "cmlp":
            out["label_embed.weight"] = (cfg["num_classes"] + 1, cfg["label_embed_dim"])
            width += cfg["label_embed_dim"]
        for i, h in enumerate(cfg["hidden"]):
            _linear(out, f"layers.{i}", width, h)
            width = h
        _linear(out, "out", width, d)
    elif arch == "unet":
        c_in = cfg["data_shape"][0]
        ch = cfg["channels"]
        out["time_embed.weights"] = (1, cfg["time_embed_dim"] // 2)
        if cfg["num_classes"]:
            out["label_embed.weight"] = (cfg["num_classes"] + 1, cfg["label_embed_dim"])
        _conv(out, "init_conv", c_in, ch[0])
        _norm(out, "init_norm", ch[0])
        for l in range(len(ch) - 1):
            for j in range(cfg["blocks_per_level"]):
                _unet_res(out, f"down.{l}.res.{j}", ch[l], cfg)
                _unet_res(out, f"up.{l}.res.{j}", ch[l], cfg)
            _conv(out, f"down.{l}.conv", ch[l], ch[l + 1])
            _conv(out, f"up.{l}.conv", ch[l + 1], ch[l])
        for j in range(cfg["blocks_per_level"]):
            _unet_res(out, f"mid.res.{j}", ch[-1], cfg)
        _conv(out, "final_conv", ch[0], c_in)
    elif arch == "dit":
        c, h, w = cfg["data_shape"]
        p, d = cfg["patch_size"], cfg["width"]
        _conv(out, "patchify", c, d, k=p)
        out["pos_embed"] = (1, (h // p) * (w // p), d)
        _dit_trunk(out, cfg)
        _linear(out, "final.fc1", d, d)
        _linear(out, "final.fc2", d, p * p * c)
        _conv(out, "final_conv", c, c)
    elif arch == "token-transformer":
        d, v = cfg["width"], cfg["symbols"]
        out["token_embed"] = (v, d)
        out["pos_embed"] = (1, cfg["seq_len"], d)
        _dit_trunk(out, cfg)
        _linear(out, "head", d, v - 1)
    elif arch == "vae":
        c_in = cfg["data_shape"][0]
        ch, k = cfg["channels"], cfg["latent_channels"]
        _conv(out, "encoder.conv_in", c_in, ch[0])
        for l, c in enumerate(ch):
            for j in range(cfg["blocks_per_level"]):
                _vae_res(out, f"encoder.down.{l}.res.{j}", c)
                _vae_res(out, f"decoder.up.{l}.res.{j}", c)
            if l + 1 < len(ch):
                _conv(out, f"encoder.down.{l}.conv", c, ch[l + 1])
            if l > 0:
                _conv(out, f"decoder.up.{l}.conv", c, ch[l - 1])
        _vae_mid(out, "encoder.mid", ch[-1], cfg)
        _norm(out, "encoder.norm_out", ch[-1])
        _conv(out, "encoder.mean", ch[-1], k)
        if cfg["logvar"] == "per-element":
            _conv(out, "encoder.logvar", ch[-1], k)
        else:
            out["encoder.logvar"] = (1,)
        _conv(out, "decoder.conv_in", k, ch[-1])
        _vae_mid(out, "decoder.mid", ch[-1], cfg)
        _norm(out, "decoder.norm_out", ch[0])
        _conv(out, "decoder.conv_out", ch[0], c_in)
        if cfg["decoder_variance"] == "learned":
            out["decoder.logvar"] = (1,)
    elif arch == "cnn":
        c_prev, h, w = cfg["data_shape"]
        for l, c in enumerate(cfg["channels"]):
            _conv(out, f"levels.{l}.conv", c_prev, c)
            _norm(out, f"levels.{l}.norm", c)
            c_prev, h, w = c, -(-h // 2), -(-w // 2)
        _linear(out, "hidden", c_prev * h * w, cfg["features"])
        _linear(out, "head", cfg["features"], cfg["num_classes"])
    return out


def check_tensors(config, tensors):
    """Raises ConfigError naming every tensor that is missing, unused or of the wrong shape."""
    want = expected_shapes(config)
    problems = []
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    if missing:
        problems.append("missing: " + ", ".join(missing))
    if extra:
        problems.append("not used by the config's network: " + ", ".join(extra))
    for name in sorted(set(want) & set(tensors)):
        got = tuple(tensors[name].shape)
        if got != tuple(want[name]):
            problems.append(f"{name} has shape {got}, the network wants {tuple(want[name])}")
    if problems:
        raise ConfigError("; ".join(problems))
