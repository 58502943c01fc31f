#!/usr/bin/env python3
"""PyTorch reference for `run-bench` (make bench-compare): the same figures, the same
architectures and sizes, on the CPU, printed as the same JSON lines with
"implementation": "pytorch". Not part of CI (torch is not a dependency of flowpipe).

Architectures mirror lib/nn: the Lab 2 MLP on [x, t]; the Lab 3 U-Net (learned Fourier time
features, label embedding with a null row, residual layers with GroupNorm -> SiLU -> conv and
time/label adapters, stride-2 down convs, nearest-upsample convs cropped to the skip's size);
the DiT (patchify conv, learned positions, sinusoidal time MLP, adaLN-Zero blocks with RMSNorm,
fused QKV attention, GELU feed-forward, final modulation, fc1 -> GELU -> fc2, unpatchify,
3x3 conv); the VAE (GroupNorm residual blocks with SiLU, stride-2 down convs, mean and
log-variance heads, nearest-upsample convs, Gaussian NLL with a learned variance + KL). Training
steps time forward + backward + AdamW on one fixed batch, as run-bench does.
"""
import argparse
import io
import json
import math
import os
import statistics
import threading
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------- networks
class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        layers, w = [], dim + 1
        for h in hidden:
            layers += [nn.Linear(w, h), nn.SiLU()]
            w = h
        self.net = nn.Sequential(*layers, nn.Linear(w, dim))

    def forward(self, x, t, y=None):
        return self.net(torch.cat([x, t], 1))


class Fourier(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weights = nn.Parameter(torch.randn(1, dim // 2))

    def forward(self, t):
        arg = 2 * math.pi * t * self.weights
        return math.sqrt(2) * torch.cat([arg.sin(), arg.cos()], 1)


def adapter(d_in, c):
    return nn.Sequential(nn.Linear(d_in, d_in), nn.SiLU(), nn.Linear(d_in, c))


class Residual(nn.Module):
    def __init__(self, c, cfg):
        super().__init__()
        g = cfg["groups"]
        self.n1, self.c1 = nn.GroupNorm(g, c), nn.Conv2d(c, c, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(g, c), nn.Conv2d(c, c, 3, padding=1)
        self.at = adapter(cfg["time_embed_dim"], c)
        self.ay = adapter(cfg["label_embed_dim"], c) if cfg["num_classes"] else None

    def forward(self, x, te, ye):
        h = self.c1(F.silu(self.n1(x)))
        cond = self.at(te)
        if self.ay is not None:
            cond = cond + self.ay(ye)
        h = h + cond[:, :, None, None]
        return x + self.c2(F.silu(self.n2(h)))


class UNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c_in, ch, b = cfg["data_shape"][0], cfg["channels"], cfg["blocks_per_level"]
        res = lambda c: nn.ModuleList(Residual(c, cfg) for _ in range(b))
        self.init_conv = nn.Conv2d(c_in, ch[0], 3, padding=1)
        self.init_norm = nn.GroupNorm(cfg["groups"], ch[0])
        self.time = Fourier(cfg["time_embed_dim"])
        k = cfg["num_classes"]
        self.label = nn.Embedding(k + 1, cfg["label_embed_dim"]) if k else None
        self.enc_res = nn.ModuleList(res(a) for a in ch[:-1])
        self.down = nn.ModuleList(nn.Conv2d(a, b_, 3, 2, 1) for a, b_ in zip(ch, ch[1:]))
        self.mid = res(ch[-1])
        self.up = nn.ModuleList(nn.Conv2d(b_, a, 3, padding=1) for a, b_ in zip(ch, ch[1:]))
        self.dec_res = nn.ModuleList(res(a) for a in ch[:-1])
        self.final = nn.Conv2d(ch[0], c_in, 3, padding=1)

    def forward(self, x, t, y):
        te = self.time(t)
        ye = self.label(y) if self.label is not None else None
        h = F.silu(self.init_norm(self.init_conv(x)))
        skips = []
        for rs, down in zip(self.enc_res, self.down):
            for r in rs:
                h = r(h, te, ye)
            size = h.shape[2:]
            h = down(h)
            skips.append((h, size))
        for r in self.mid:
            h = r(h, te, ye)
        for l in reversed(range(len(self.up))):
            skip, (hh, ww) = skips.pop()
            h = F.interpolate(h + skip, scale_factor=2, mode="nearest")[:, :, :hh, :ww]
            h = self.up[l](h)
            for r in self.dec_res[l]:
                h = r(h, te, ye)
        return self.final(h)


def rms(x, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def sinusoidal(t, dim):
    half = dim // 2
    k = torch.arange(half, dtype=t.dtype)
    freqs = 1000.0 * torch.exp(-math.log(10000.0) * k / half)
    arg = t * freqs[None]
    return torch.cat([arg.cos(), arg.sin()], 1)


class DitBlock(nn.Module):
    def __init__(self, d, heads, ratio):
        super().__init__()
        self.mod = nn.Linear(d, 6 * d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, ratio * d), nn.Linear(ratio * d, d)
        self.heads = heads

    def attn(self, x):
        n, l, d = x.shape
        q, k, v = self.qkv(x).reshape(n, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, l, d))

    def forward(self, z, c):
        s1, a1, g1, s2, a2, g2 = self.mod(c)[:, None].chunk(6, -1)
        z = z + g1 * self.attn(rms(z) * (1 + a1) + s1)
        return z + g2 * self.fc2(F.gelu(self.fc1(rms(z) * (1 + a2) + s2)))


class Dit(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c, h, w = cfg["data_shape"]
        p, d = cfg["patch_size"], cfg["width"]
        self.cfg = cfg
        self.patchify = nn.Conv2d(c, d, p, p)
        self.pos = nn.Parameter(0.02 * torch.randn(1, (h // p) * (w // p), d))
        tf = cfg["time_features"]
        self.time = nn.Sequential(nn.Linear(tf, d), nn.SiLU(), nn.Linear(d, d))
        k = cfg["num_classes"]
        self.label = nn.Embedding(k + 1, d) if k else None
        self.blocks = nn.ModuleList(DitBlock(d, cfg["heads"], cfg["mlp_ratio"]) for _ in range(cfg["depth"]))
        self.fmod, self.ffc1, self.ffc2 = nn.Linear(d, 2 * d), nn.Linear(d, d), nn.Linear(d, p * p * c)
        self.final = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, t, y):
        c, h, w = self.cfg["data_shape"]
        p, n = self.cfg["patch_size"], x.shape[0]
        cond = self.time(sinusoidal(t, self.cfg["time_features"]))
        if self.label is not None:
            cond = cond + self.label(y)
        ca = F.silu(cond)
        z = self.patchify(x).flatten(2).transpose(1, 2) + self.pos
        for b in self.blocks:
            z = b(z, ca)
        s, a = self.fmod(ca)[:, None].chunk(2, -1)
        patches = self.ffc2(F.gelu(self.ffc1(rms(z) * (1 + a) + s)))
        img = patches.reshape(n, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, h, w)
        return self.final(img)


class VaeRes(nn.Module):
    def __init__(self, c, g):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(g, c), nn.Conv2d(c, c, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(g, c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.c2(F.silu(self.n2(self.c1(F.silu(self.n1(x))))))


class Vae(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c_in, ch, g, k = cfg["data_shape"][0], cfg["channels"], cfg["groups"], cfg["latent_channels"]
        res = lambda c: nn.Sequential(*[VaeRes(c, g) for _ in range(cfg["blocks_per_level"])])
        self.e_in = nn.Conv2d(c_in, ch[0], 3, padding=1)
        self.e_levels = nn.ModuleList(res(c) for c in ch)
        self.e_down = nn.ModuleList(nn.Conv2d(a, b, 3, 2, 1) for a, b in zip(ch, ch[1:]))
        self.e_mid = nn.Sequential(VaeRes(ch[-1], g), VaeRes(ch[-1], g))
        self.e_norm = nn.GroupNorm(g, ch[-1])
        self.mean, self.logvar = nn.Conv2d(ch[-1], k, 3, padding=1), nn.Conv2d(ch[-1], k, 3, padding=1)
        self.d_in = nn.Conv2d(k, ch[-1], 3, padding=1)
        self.d_mid = nn.Sequential(VaeRes(ch[-1], g), VaeRes(ch[-1], g))
        self.d_levels = nn.ModuleList(res(c) for c in ch)
        self.d_up = nn.ModuleList(nn.Conv2d(b, a, 3, padding=1) for a, b in zip(ch, ch[1:]))
        self.d_norm = nn.GroupNorm(g, ch[0])
        self.d_out = nn.Conv2d(ch[0], c_in, 3, padding=1)
        self.dec_logvar = nn.Parameter(torch.tensor([math.log(0.01)]))

    def loss(self, x, eps):
        h = self.e_in(x)
        for l, blocks in enumerate(self.e_levels):
            h = blocks(h)
            if l < len(self.e_down):
                h = self.e_down[l](h)
        h = F.silu(self.e_norm(self.e_mid(h)))
        mean, logvar = self.mean(h), self.logvar(h).clamp(-30, 20)
        h = self.d_mid(self.d_in(mean + (0.5 * logvar).exp() * eps))
        for l in reversed(range(len(self.d_levels))):
            h = self.d_levels[l](h)
            if l > 0:
                h = self.d_up[l - 1](F.interpolate(h, scale_factor=2, mode="nearest"))
        recon = self.d_out(F.silu(self.d_norm(h)))
        d = x[0].numel()
        nll = 0.5 * ((x - recon).pow(2).flatten(1).sum(1) / self.dec_logvar.exp()
                     + d * (self.dec_logvar + math.log(2 * math.pi)))
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)
        return (nll + kl).mean()


def vae_step(tiny, reps):
    cfg = {"data_shape": [1, 8, 8] if tiny else [1, 32, 32], "channels": [4, 8] if tiny else [16, 32, 64],
           "blocks_per_level": 1, "latent_channels": 4, "groups": 4}
    batch = 2 if tiny else 128
    net = Vae(cfg)
    g = torch.Generator().manual_seed(4)
    x = torch.randn([batch] + cfg["data_shape"], generator=g)
    side = cfg["data_shape"][1] >> (len(cfg["channels"]) - 1)
    eps = torch.randn([batch, cfg["latent_channels"], side, side], generator=g)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.0)

    def step():
        opt.zero_grad(set_to_none=True)
        net.loss(x, eps).backward()
        opt.step()

    config = dict(cfg, arch="vae", batch=batch, parameters=sum(p.numel() for p in net.parameters()))
    return line("train_step_vae", config, reps[0], timed(reps[0], reps[1], step))


# ---------------------------------------------------------------- figures
def timed(warmup, runs, f):
    for _ in range(warmup):
        f()
    out = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        f()
        out.append(1000 * (time.perf_counter() - start))
    return out


def line(figure, config, warmup, times, **extra):
    v = {"figure": figure, "config": config, "median_ms": round(statistics.median(times), 3),
         "runs": len(times), "warmup": warmup, "threads": torch.get_num_threads(),
         "implementation": "pytorch"}
    v.update(extra)
    return v


def fm_batch(shape, classes):
    g = torch.Generator().manual_seed(0)
    b = shape[0]
    x1, x0 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    t = ((torch.arange(b) + 0.5) / b)[:, None]
    tt = t.reshape([b] + [1] * (len(shape) - 1))
    y = torch.arange(b) % (classes + 1)
    return tt * x1 + (1 - tt) * x0, t, x1 - x0, y


def train_step(figure, config, net, shape, classes, reps):
    xt, t, target, y = fm_batch(shape, classes)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.0)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = (net(xt, t, y) - target).pow(2).sum() / shape[0]
        loss.backward()
        opt.step()

    config = dict(config, parameters=sum(p.numel() for p in net.parameters()))
    return line(figure, config, reps[0], timed(reps[0], reps[1], step))


def unet_config(tiny):
    if tiny:
        return {"arch": "unet", "data_shape": [1, 8, 8], "channels": [8, 16], "blocks_per_level": 1,
                "time_embed_dim": 8, "label_embed_dim": 8, "num_classes": 10, "groups": 4}
    return {"arch": "unet", "data_shape": [1, 28, 28], "channels": [32, 64, 128], "blocks_per_level": 2,
            "time_embed_dim": 40, "label_embed_dim": 40, "num_classes": 10, "groups": 8}


def figures(tiny, runs, only=()):
    want = lambda *names: not only or any(n in only for n in names)
    r = lambda default: (1, 2) if tiny else (1, runs or default)
    if want("matmul"):
        n = 64 if tiny else 1024
        g = torch.Generator().manual_seed(11)
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        warm, reps = (1, 2) if tiny else (3, runs or 11)
        times = timed(warm, reps, lambda: torch.mm(a, b)[0, 0].item())
        yield line("matmul", {"m": n, "k": n, "n": n, "dtype": "f32"}, warm, times,
                   gflops=round(2 * n ** 3 / (statistics.median(times) * 1e6), 1))

    if want("train_step_mlp2d"):
        hidden, batch = (16, 8) if tiny else (256, 1024)
        cfg = {"arch": "mlp", "data_shape": [2], "hidden": [hidden] * 4, "activation": "silu",
               "time_features": 0, "batch": batch}
        yield train_step("train_step_mlp2d", cfg, Mlp(2, cfg["hidden"]), [batch, 2], 0,
                         (1, 2) if tiny else (5, runs or 30))

    if want("train_step_unet"):
        cfg = unet_config(tiny)
        batch = 2 if tiny else 128
        yield train_step("train_step_unet", dict(cfg, batch=batch), UNet(cfg), [batch] + cfg["data_shape"], 10, r(5))

    if want("train_step_dit"):
        if tiny:
            cfg = {"arch": "dit", "data_shape": [4, 4, 4], "patch_size": 2, "width": 16, "depth": 1, "heads": 2,
                   "num_classes": 10, "mlp_ratio": 4, "time_features": 8}
        else:
            cfg = {"arch": "dit", "data_shape": [4, 8, 8], "patch_size": 2, "width": 256, "depth": 6, "heads": 4,
                   "num_classes": 10, "mlp_ratio": 4, "time_features": 256}
        batch = 2 if tiny else 256
        yield train_step("train_step_dit", dict(cfg, batch=batch), Dit(cfg), [batch] + cfg["data_shape"], 10, r(5))

    if want("train_step_vae"):
        yield vae_step(tiny, r(5))

    if want("sample_cfg_unet"):
        cfg = unet_config(tiny)
        batch, steps, w = (1, 2, 3.0) if tiny else (8, 100, 3.0)
        net = UNet(cfg)
        x0 = torch.randn([batch] + cfg["data_shape"], generator=torch.Generator().manual_seed(3))
        y = torch.cat([torch.arange(batch) % 10, torch.full((batch,), 10)])

        @torch.inference_mode()
        def sample():
            x = x0.clone()
            for k in range(steps):
                t = torch.full((2 * batch, 1), k / steps)
                both = net(torch.cat([x, x]), t, y)
                x = x + (w * both[:batch] + (1 - w) * both[batch:]) / steps
            return x

        warm = 0 if tiny else 1
        times = timed(warm, 1 if tiny else (runs or 3), sample)
        cfg = dict(cfg, batch=batch, steps=steps, guidance=w)
        yield line("sample_cfg_unet", cfg, warm, times, images_per_s=batch / (statistics.median(times) / 1000))

    if want("npy_write_pipe", "npy_read_pipe"):
        n = 16 if tiny else 16384
        arr = np.random.default_rng(4).standard_normal((n, 1, 32, 32), dtype=np.float32)
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arr)
        data = buf.getvalue()
        mb = len(data) / 1e6

        def write():
            r, wfd = os.pipe()
            drain = threading.Thread(target=lambda: [None for _ in iter(lambda: os.read(r, 1 << 20), b"")])
            drain.start()
            b = io.BytesIO()
            np.lib.format.write_array(b, arr)
            with os.fdopen(wfd, "wb") as f:
                f.write(b.getvalue())
            drain.join()
            os.close(r)

        def read():
            r, wfd = os.pipe()

            def fill():
                with os.fdopen(wfd, "wb") as f:
                    f.write(data)

            th = threading.Thread(target=fill)
            th.start()
            with os.fdopen(r, "rb") as f:
                got = f.read()
            th.join()
            np.lib.format.read_array(io.BytesIO(got))

        cfg = {"shape": [n, 1, 32, 32], "dtype": "f32", "megabytes": mb}
        warm = 0 if tiny else 1
        for name, f in [("npy_write_pipe", write), ("npy_read_pipe", read)]:
            times = timed(warm, 1 if tiny else (runs or 5), f)
            yield line(name, cfg, warm, times, mb_per_s=mb / (statistics.median(times) / 1000))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads [all cores]")
    ap.add_argument("--runs", type=int, default=None, help="timed runs per figure")
    ap.add_argument("--only", default="", help="only these figures, comma separated [all]")
    ap.add_argument("-o", "--output", default="-", help="JSON lines file [stdout]")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    only = tuple(f for f in args.only.split(",") if f)
    out = [json.dumps(v) for v in figures(args.tiny, args.runs, only)]
    text = "\n".join(out) + "\n"
    if args.output == "-":
        print(text, end="")
    else:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
