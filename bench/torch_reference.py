#!/usr/bin/env python3
"""PyTorch reference for `run-bench` (make bench-compare): the same figures, the same
networks and sizes, on the CPU, printed as the same JSON lines with "implementation": "pytorch".
Not part of CI (torch is not a dependency of flowpipe).

The networks are flowpipe's own PyTorch modules (python/flowpipe/torch_nets.py, the package's
reference implementation, checked against the tools by python/tests/test_forward.py), built from
run-bench's configs. Training steps time forward + backward + AdamW on one fixed batch, as
run-bench does; the VAE's step is its negative ELBO (Gaussian NLL under the decoder's variance
plus the KL).
"""
import argparse
import io
import json
import math
import os
import statistics
import threading
import time

import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from flowpipe.torch_nets import build  # noqa: E402  (the checkout's package; or pip install ./python)


# ---------------------------------------------------------------- networks
# The networks are flowpipe's own, as the package in python/ builds them (flowpipe.torch_nets:
# the model-file tensor names, the trainer's initialisation, adaLN-Zero), from the configs that
# run-bench prints. With --configs (make bench-compare passes the flowpipe side's lines) each
# network figure uses exactly the config flowpipe ran; otherwise the defaults below, which mirror
# lib/bench.rs. compare.py refuses a pair whose parameter counts differ.


def default_configs(tiny):
    """{figure: network config} as run-bench prints them (batch and sampling settings included)."""
    unet = {"arch": "unet", "data_shape": [1, 8, 8], "channels": [8, 16], "blocks_per_level": 1,
            "time_embed_dim": 8, "label_embed_dim": 8, "num_classes": 10, "groups": 4}
    if not tiny:
        unet = {"arch": "unet", "data_shape": [1, 28, 28], "channels": [32, 64, 128], "blocks_per_level": 2,
                "time_embed_dim": 40, "label_embed_dim": 40, "num_classes": 10, "groups": 8}
    hidden, batch = (16, 8) if tiny else (256, 1024)
    dit = ({"data_shape": [4, 4, 4], "width": 16, "depth": 1, "heads": 2, "time_features": 8} if tiny else
           {"data_shape": [4, 8, 8], "width": 256, "depth": 6, "heads": 4, "time_features": 256})
    return {
        "train_step_mlp2d": {"arch": "mlp", "data_shape": [2], "hidden": [hidden] * 4, "activation": "silu",
                             "time_features": 0, "batch": batch},
        "train_step_unet": dict(unet, batch=2 if tiny else 128),
        "train_step_dit": dict(dit, arch="dit", patch_size=2, num_classes=10, mlp_ratio=4, activation="gelu",
                               batch=2 if tiny else 256),
        "train_step_vae": {"arch": "vae", "data_shape": [1, 8, 8] if tiny else [1, 32, 32],
                           "channels": [4, 8] if tiny else [16, 32, 64], "blocks_per_level": 1,
                           "latent_channels": 4, "groups": 4, "attention": False, "logvar": "per-element",
                           "decoder_variance": "learned", "decoder_std": 0.1, "scale_factor": 1.0,
                           "latent_shape": [4, 4, 4] if tiny else [4, 8, 8], "batch": 2 if tiny else 128},
        "sample_cfg_unet": dict(unet, batch=1 if tiny else 8, steps=2 if tiny else 100, guidance=3.0),
    }


def configs_from(path):
    """{figure: config} of the last line of each figure in a run-bench JSON lines file."""
    out = {}
    with open(path) as f:
        for v in map(json.loads, filter(str.strip, f)):
            if "config" in v and "arch" in v["config"]:
                out[v["figure"]] = v["config"]
    return out


def vae_loss(net, x, eps):
    """The negative ELBO of run-bench's VAE figure: the reparametrised posterior sample, the
    Gaussian NLL under the decoder's variance, and the KL to N(0, I), averaged over the batch."""
    mean, logvar = net.posterior(x)
    recon = net.decoder(mean + (0.5 * logvar).exp() * eps)
    cfg = net.config
    if cfg["decoder_variance"] == "learned":
        dec_logvar = net.decoder.logvar
    else:
        dec_logvar = torch.tensor([math.log(cfg["decoder_std"] ** 2)])
    d = x[0].numel()
    nll = 0.5 * ((x - recon).pow(2).flatten(1).sum(1) / dec_logvar.exp() + d * (dec_logvar + math.log(2 * math.pi)))
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)
    return (nll + kl).mean()


def vae_step(cfg, reps):
    batch = cfg["batch"]
    net = build(cfg)
    g = torch.Generator().manual_seed(4)
    x = torch.randn([batch] + cfg["data_shape"], generator=g)
    eps = torch.randn([batch] + net.config["latent_shape"], generator=g)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.0)

    def step():
        opt.zero_grad(set_to_none=True)
        vae_loss(net, x, eps).backward()
        opt.step()

    config = dict(cfg, parameters=sum(p.numel() for p in net.parameters()))
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


def train_step(figure, config, reps):
    net = build(config)
    shape = [config["batch"]] + config["data_shape"]
    classes = config.get("num_classes", 0)
    xt, t, target, y = fm_batch(shape, classes)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.0)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = (net(xt, t, y) - target).pow(2).sum() / shape[0]
        loss.backward()
        opt.step()

    config = dict(config, parameters=sum(p.numel() for p in net.parameters()))
    return line(figure, config, reps[0], timed(reps[0], reps[1], step))


def figures(tiny, runs, only=(), configs=None):
    want = lambda *names: not only or any(n in only for n in names)
    r = lambda default: (1, 2) if tiny else (1, runs or default)
    cfgs = dict(default_configs(tiny), **(configs or {}))
    if want("matmul"):
        n = 64 if tiny else 1024
        g = torch.Generator().manual_seed(11)
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        warm, reps = (1, 2) if tiny else (3, runs or 11)
        times = timed(warm, reps, lambda: torch.mm(a, b)[0, 0].item())
        yield line("matmul", {"m": n, "k": n, "n": n, "dtype": "f32"}, warm, times,
                   gflops=round(2 * n ** 3 / (statistics.median(times) * 1e6), 1))

    if want("train_step_mlp2d"):
        yield train_step("train_step_mlp2d", cfgs["train_step_mlp2d"], (1, 2) if tiny else (5, runs or 30))

    for fig in ("train_step_unet", "train_step_dit"):
        if want(fig):
            yield train_step(fig, cfgs[fig], r(5))

    if want("train_step_vae"):
        yield vae_step(cfgs["train_step_vae"], r(5))

    if want("sample_cfg_unet"):
        cfg = cfgs["sample_cfg_unet"]
        batch, steps, w = cfg["batch"], cfg["steps"], cfg["guidance"]
        net = build(cfg)
        k = cfg["num_classes"]
        x0 = torch.randn([batch] + cfg["data_shape"], generator=torch.Generator().manual_seed(3))
        y = torch.cat([torch.arange(batch) % k, torch.full((batch,), k)])

        @torch.inference_mode()
        def sample():
            x = x0.clone()
            for i in range(steps):
                t = torch.full((2 * batch, 1), i / steps)
                both = net(torch.cat([x, x]), t, y)
                x = x + (w * both[:batch] + (1 - w) * both[batch:]) / steps
            return x

        warm = 0 if tiny else 1
        times = timed(warm, 1 if tiny else (runs or 3), sample)
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
    ap.add_argument("--configs", help="run-bench JSON lines: build each network figure from its config there")
    ap.add_argument("-o", "--output", default="-", help="JSON lines file [stdout]")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    only = tuple(f for f in args.only.split(",") if f)
    configs = configs_from(args.configs) if args.configs else None
    out = [json.dumps(v) for v in figures(args.tiny, args.runs, only, configs)]
    text = "\n".join(out) + "\n"
    if args.output == "-":
        print(text, end="")
    else:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
