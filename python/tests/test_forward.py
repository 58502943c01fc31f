#!/usr/bin/env python3
"""The NumPy forwards of the flowpipe package against the tools themselves.

For each architecture, at tiny sizes: random weights under the names and shapes of
docs/model-format.md (every parameter random, the zero-initialised ones included, so every path
matters), written with flowpipe.save, evaluated by `eval-field` (encode-vae / decode-vae for the
VAE, `evaluate --classifier` for the classifier: argmax histogram and classifier-FID) and
by the package; the two must agree to 1e-5 (relative to the output's scale when it is above 1).
Then files written by the tools (fit-velocity, fit-vae) are loaded and compared the same way.

    python3 python/tests/test_forward.py [--bin target/release] [--keep DIR]

Where PyTorch imports, every check also runs the package's torch modules (flowpipe.torch_nets)
on the same inputs against the same tool output.

Prints one line per check; exits 1 when any check fails. Needs numpy and safetensors only
(and torch for the torch checks, which are skipped without it).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

import flowpipe  # noqa: E402

try:
    import torch  # noqa: E402
except ImportError:
    torch = None

TOL = 1e-5
T = 0.37
FAILURES = []


def report(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        FAILURES.append(name)


def compare(name, ref, got, tol=TOL):
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        report(name, False, f"shape {got.shape} against the tools' {ref.shape}")
        return
    diff = float(np.max(np.abs(ref - got))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    ok = diff <= tol * max(1.0, scale)
    report(name, ok, f"max |diff| {diff:.2e} (output scale {scale:.3g}, shape {ref.shape})")


class Tools:
    def __init__(self, bin_dir, work):
        self.bin = bin_dir
        self.work = work

    def __call__(self, tool, *args):
        cmd = [os.path.join(self.bin, tool), *map(str, args)]
        if tool not in ("sample-noise",):
            cmd += ["--threads", "1"]
        r = subprocess.run(cmd, cwd=self.work, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr.strip()}")
        return r.stdout

    def path(self, name):
        return os.path.join(self.work, name)


def torch_check(name, ref, model, call):
    """The same comparison through model.to_torch(): call(net) gives the torch output."""
    if torch is None:
        return
    net = model.to_torch().double()
    with torch.no_grad():
        got = call(net)
    got = got if isinstance(got, tuple) else (got,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    for i, (r, g) in enumerate(zip(refs, got)):
        compare(f"{name} [torch{'' if len(refs) == 1 else f' {i}'}]", r, g.numpy())


def t64(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def random_weights(config, rng):
    """Random tensors for every name the config's network uses, at scales that keep the
    activations of order one; norms, modulations, gates and embeddings all away from their
    zero or one initial values."""
    out = {}
    for name, shape in flowpipe.expected_shapes(config).items():
        z = rng.standard_normal(shape)
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if name in ("encoder.logvar", "decoder.logvar"):
            v = 0.3 * z
        elif name == "time_embed.weights":
            v = z  # Fourier frequencies, N(0, 1) as trained
        elif name.endswith("label_embed.weight"):
            v = z
        elif name == "pos_embed":
            v = 0.3 * z
        elif name == "token_embed":
            v = z
        elif name.endswith(".weight") and "norm" in name.split(".")[-2]:
            v = 1.0 + 0.2 * z
        elif name.endswith(".bias"):
            v = 0.2 * z
        elif "modulation" in name:
            v = 0.7 * z / math.sqrt(fan_in)
        else:
            v = z / math.sqrt(fan_in)
        out[name] = v.astype(np.float32)
    return out


def field_config(arch, data_shape, num_classes, **fields):
    c = {
        "kind": "velocity",
        "arch": arch,
        "parametrisation": "velocity",
        "path": "condot",
        "source": "gaussian",
        "data_shape": list(data_shape),
        "num_classes": num_classes,
    }
    c.update(fields)
    return c


def denoiser_config(symbols, seq_len, num_classes, noise="mask", **fields):
    c = {
        "kind": "denoiser",
        "arch": "token-transformer",
        "vocab": {"format": "flowpipe-vocab/1", "unit": "chars", "symbols": symbols, "pad": 0, "mask": len(symbols) - 1, "image_shape": None},
        "seq_len": seq_len,
        "num_classes": num_classes,
        "kappa": "linear",
        "noise": noise,
    }
    c.update(fields)
    return c


def check_field(tools, name, config, rng, n=5, with_labels=True):
    tensors = random_weights(config, rng)
    f = tools.path(f"{name}.safetensors")
    flowpipe.save(f, config, tensors)
    model = flowpipe.load(f)
    x = rng.standard_normal((n, *config["data_shape"])).astype(np.float32)
    np.save(tools.path(f"{name}-x.npy"), x)
    args = [f"{name}-x.npy", "--model", f"{name}.safetensors", "--t", T, "--what", "velocity", "-q", "-o", f"{name}-v.npy"]
    y = None
    k = config.get("num_classes", 0)
    if with_labels and k:
        y = rng.integers(0, k + 1, size=n).astype(np.int64)
        y[0], y[-1] = k, 0  # the null label and a class, always
        np.save(tools.path(f"{name}-y.npy"), y)
        args += ["--labels", f"{name}-y.npy"]
    tools("eval-field", *args)
    ref = np.load(tools.path(f"{name}-v.npy"))
    compare(name, ref, model.forward(x, T, y, dtype=np.float64))
    torch_check(name, ref, model, lambda net: net(t64(x), T, None if y is None else torch.from_numpy(y)))
    return model


def check_denoiser(tools, name, config, rng, n=6):
    """A token transformer: eval-field's logits at random tokens ([MASK] among them)."""
    tensors = random_weights(config, rng)
    f = f"{name}.safetensors"
    flowpipe.save(tools.path(f), config, tensors)
    model = flowpipe.load(tools.path(f))
    symbols = len(config["vocab"]["symbols"])
    x = rng.integers(0, symbols, size=(n, config["seq_len"])).astype(np.int64)
    x[0, :] = symbols - 1  # all [MASK]
    np.save(tools.path(f"{name}-x.npy"), x)
    args = [f"{name}-x.npy", "--model", f, "--t", T, "-q", "-o", f"{name}-l.npy"]
    k = config.get("num_classes", 0)
    y = None
    if k:
        y = rng.integers(0, k + 1, size=n).astype(np.int64)
        y[0], y[-1] = k, 0
        np.save(tools.path(f"{name}-y.npy"), y)
        args += ["--labels", f"{name}-y.npy"]
    tools("eval-field", *args)
    ref = np.load(tools.path(f"{name}-l.npy"))
    compare(f"{name} logits", ref, model.denoiser_logits(x, T, y, dtype=np.float64))
    torch_check(f"{name} logits", ref, model, lambda net: net(torch.from_numpy(x), T, None if y is None else torch.from_numpy(y)))


def check_tool_field(tools, name, model_file, x, y=None, raw_differs=True):
    """A model written by the tools: load it and compare with eval-field at x."""
    model = flowpipe.load(tools.path(model_file))
    np.save(tools.path(f"{name}-x.npy"), x)
    args = [f"{name}-x.npy", "--model", model_file, "--t", T, "--what", model.parametrisation, "-q", "-o", f"{name}-v.npy"]
    if y is not None:
        np.save(tools.path(f"{name}-y.npy"), y)
        args += ["--labels", f"{name}-y.npy"]
    tools("eval-field", *args)
    ref = np.load(tools.path(f"{name}-v.npy"))
    compare(name, ref, model.forward(x, T, y, dtype=np.float64))
    torch_check(name, ref, model, lambda net: net(t64(x), T, None if y is None else torch.from_numpy(np.asarray(y))))
    if raw_differs:
        # The file has EMA weights, and the tools use them: the raw weights give other values.
        raw = flowpipe.load(tools.path(model_file), weights="raw").forward(x, T, y, dtype=np.float64)
        d = float(np.max(np.abs(raw - ref)))
        report(f"{name} (EMA weights preferred)", d > 1e-4, f"raw weights differ from eval-field by {d:.2e}")


def check_vae(tools, name, config, rng, n=3):
    tensors = random_weights(config, rng)
    f = f"{name}.safetensors"
    flowpipe.save(tools.path(f), config, tensors)
    model = flowpipe.load(tools.path(f))
    x = rng.uniform(-1, 1, size=(n, *config["data_shape"])).astype(np.float32)
    np.save(tools.path(f"{name}-x.npy"), x)
    tools("encode-vae", f"{name}-x.npy", "--model", f, "--mean", "-q", "-o", f"{name}-z.npy")
    z = np.load(tools.path(f"{name}-z.npy"))
    compare(f"{name} encode (scaled mean)", z, model.encode(x, dtype=np.float64))
    torch_check(f"{name} encode (scaled mean)", z, model, lambda net: net.encode(t64(x)))
    tools("decode-vae", f"{name}-z.npy", "--model", f, "-q", "-o", f"{name}-d.npy")
    d = np.load(tools.path(f"{name}-d.npy"))
    compare(f"{name} decode", d, model.decode(z, dtype=np.float64))
    torch_check(f"{name} decode", d, model, lambda net: net.decode(t64(z)))


def _sqrt_psd(a):
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet(f1, f2):
    """The classifier-FID of `evaluate`: |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2),
    covariances with 1/(n - 1)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    s1 = _sqrt_psd(c1)
    d = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(_sqrt_psd(s1 @ c2 @ s1))
    return max(float(d), 0.0)


def check_cnn(tools, name, config, rng, n=24, m=16):
    """The classifier has no tool that prints its logits: `evaluate --classifier` gives the
    histogram of argmax classes (from the logits) and the classifier-FID (from the features),
    which are compared with the same figures computed from the package's forward."""
    tensors = random_weights(config, rng)
    tensors["head.weight"] = tensors["head.weight"] * 4  # spread the predicted classes
    f = f"{name}.safetensors"
    flowpipe.save(tools.path(f), config, tensors)
    model = flowpipe.load(tools.path(f))
    x = rng.uniform(-1, 1, size=(n, *config["data_shape"])).astype(np.float32)
    r = rng.uniform(-1, 1, size=(m, *config["data_shape"])).astype(np.float32)
    np.save(tools.path(f"{name}-x.npy"), x)
    np.save(tools.path(f"{name}-r.npy"), r)
    tools("evaluate", f"{name}-x.npy", "--classifier", f, "--reference", f"{name}-r.npy", "-q", "-o", f"{name}.json")
    with open(tools.path(f"{name}.json")) as fh:
        rep = json.load(fh)
    counts = np.bincount(np.argmax(model.logits(x, dtype=np.float64), axis=1), minlength=config["num_classes"])
    counts = counts.tolist()
    ok = counts == list(rep["class_histogram"]["counts"])
    report(f"{name} logits (argmax histogram)", ok and sum(c > 0 for c in counts) > 1, f"package {counts}, evaluate {rep['class_histogram']['counts']}")
    fid = frechet(model.features(x, dtype=np.float64), model.features(r, dtype=np.float64))
    compare(f"{name} features (classifier-FID)", np.array([rep["classifier_fid"]["value"]]), np.array([fid]))
    if torch is not None:
        net = model.to_torch().double()
        with torch.no_grad():
            logits = net(t64(x)).numpy()
            tfid = frechet(net.features(t64(x)).numpy(), net.features(t64(r)).numpy())
        tcounts = np.bincount(np.argmax(logits, axis=1), minlength=config["num_classes"]).tolist()
        report(f"{name} logits [torch]", tcounts == counts, f"torch {tcounts}, evaluate {counts}")
        compare(f"{name} features [torch]", np.array([rep["classifier_fid"]["value"]]), np.array([tfid]))


def roundtrip(tools, rng):
    config = field_config("mlp", [2], 0, hidden=[4], activation="relu")
    tensors = random_weights(config, rng)
    tensors.update({"ema." + k: v + 1 for k, v in tensors.items()})
    f = tools.path("rt.safetensors")
    flowpipe.save(f, config, tensors)
    cfg, back = flowpipe.read_file(f)
    same = set(back) == set(tensors) and all(np.array_equal(back[k], tensors[k]) for k in tensors)
    ema = flowpipe.load(f).tensors
    ok = same and cfg["format"] == flowpipe.FORMAT and np.array_equal(ema["out.bias"], tensors["out.bias"] + 1)
    report("save/load round trip", ok, "tensors, format stamp and EMA selection")
    try:
        flowpipe.save(f, config, {"out.weigth": np.zeros((2, 4))})
        report("save refuses wrong names", False, "no error")
    except flowpipe.ConfigError as e:
        report("save refuses wrong names", "out.weigth" in str(e), str(e)[:80] + "...")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--bin",
        default=os.path.join(HERE, "..", "..", "target", "release"),
        help="folder of the built tools (default: the checkout's target/release)",
    )
    ap.add_argument("--keep", help="work in this folder (kept) instead of a temporary one")
    args = ap.parse_args()
    bin_dir = os.path.abspath(args.bin)
    if not os.path.exists(os.path.join(bin_dir, "eval-field")):
        print(f"no eval-field in {bin_dir} (build the tools, or pass --bin)")
        return 2
    rng = np.random.default_rng(20240601)
    with tempfile.TemporaryDirectory(prefix="flowpipe-py-") as tmp:
        work = os.path.abspath(args.keep) if args.keep else tmp
        os.makedirs(work, exist_ok=True)
        tools = Tools(bin_dir, work)
        checks = [
            ("mlp silu K=3", lambda: check_field(tools, "mlp-silu", field_config("mlp", [3], 0, hidden=[16, 12], activation="silu", time_features=3), rng, with_labels=False)),
            ("mlp tanh K=0", lambda: check_field(tools, "mlp-tanh", field_config("mlp", [2], 0, hidden=[8], activation="tanh"), rng, with_labels=False)),
            ("mlp relu K=2", lambda: check_field(tools, "mlp-relu", field_config("mlp", [2], 0, hidden=[16, 16, 8], activation="relu", time_features=2), rng, with_labels=False)),
            ("cmlp", lambda: check_field(tools, "cmlp", field_config("cmlp", [2], 3, hidden=[16, 16], activation="silu", time_features=2, label_embed_dim=5), rng, n=8)),
            ("dit p2 gelu", lambda: check_field(tools, "dit-p2-gelu", field_config("dit", [2, 4, 6], 4, patch_size=2, width=16, depth=2, heads=2, mlp_ratio=2, time_features=16, activation="gelu"), rng)),
            ("dit p2 silu", lambda: check_field(tools, "dit-p2-silu", field_config("dit", [3, 4, 4], 3, patch_size=2, width=12, depth=2, heads=3, mlp_ratio=2, time_features=10, activation="silu"), rng)),
            ("dit p1 gelu", lambda: check_field(tools, "dit-p1-gelu", field_config("dit", [4, 3, 3], 5, patch_size=1, width=16, depth=1, heads=4, mlp_ratio=1, time_features=16, activation="gelu"), rng)),
            ("dit p1 silu", lambda: check_field(tools, "dit-p1-silu", field_config("dit", [2, 4, 2], 2, patch_size=1, width=8, depth=2, heads=2, mlp_ratio=2, time_features=7, activation="silu"), rng)),
            ("unet", lambda: check_field(tools, "unet", field_config("unet", [2, 7, 5], 3, channels=[4, 8, 8], blocks_per_level=1, time_embed_dim=6, label_embed_dim=4, groups=2), rng, n=3)),
            ("unet 2 blocks", lambda: check_field(tools, "unet-b2", field_config("unet", [1, 6, 6], 2, channels=[4, 8], blocks_per_level=2, time_embed_dim=4, label_embed_dim=3, groups=4), rng, n=3)),
            ("unet uncond", lambda: check_field(tools, "unet-uncond", field_config("unet", [1, 5, 4], 0, channels=[2, 4], blocks_per_level=1, time_embed_dim=4, groups=1), rng, n=2)),
            ("vae attention", lambda: check_vae(tools, "vae-attn", {"kind": "vae", "arch": "vae", "data_shape": [1, 7, 6], "channels": [4, 8], "groups": 2, "blocks_per_level": 1, "latent_channels": 2, "attention": True, "scale_factor": 1.7}, rng)),
            ("cnn", lambda: check_cnn(tools, "cnn", {"kind": "classifier", "arch": "cnn", "data_shape": [2, 7, 5], "channels": [4, 8], "features": 6, "num_classes": 4, "groups": 2}, rng)),
            ("token-transformer", lambda: check_denoiser(tools, "tt", denoiser_config(["[PAD]", "a", "b", "c", "[MASK]"], 5, 3, width=12, depth=2, heads=3, mlp_ratio=2, time_features=10, activation="silu"), rng)),
            ("token-transformer gelu K=0", lambda: check_denoiser(tools, "tt-gelu", denoiser_config(["[PAD]", "x", "y", "[MASK]"], 4, 0, width=8, depth=1, heads=2, mlp_ratio=1, time_features=7, activation="gelu", noise="uniform"), rng)),
            ("vae scalar", lambda: check_vae(tools, "vae-scalar", {"kind": "vae", "arch": "vae", "data_shape": [2, 8, 8], "channels": [4, 4, 8], "blocks_per_level": 2, "latent_channels": 3, "logvar": "scalar", "decoder_variance": "fixed", "groups": 2, "scale_factor": 0.6}, rng)),
        ]
        for name, run in checks:
            try:
                run()
            except Exception as e:  # a tool refused the file, or the forward failed
                report(name, False, f"{type(e).__name__}: {e}")

        # Files written by the tools themselves.
        try:
            tools("sample-noise", "-n", 64, "--shape", 2, "--seed", 1, "-o", tools.path("d.npy"))
            tools("fit-velocity", "--data", "d.npy", "--steps", 3, "--batch", 16, "--hidden", "16,16", "--time-features", 2, "--ema", 0.5, "--checkpoint", "ck.safetensors", "-q", "-o", "m.safetensors")
            check_tool_field(tools, "fit-velocity mlp", "m.safetensors", rng.standard_normal((7, 2)).astype(np.float32))
            check_tool_field(tools, "fit-velocity checkpoint", "ck.safetensors", rng.standard_normal((3, 2)).astype(np.float32))
            labels = (np.arange(64) % 3).astype(np.int64)
            np.save(tools.path("dl.npy"), labels)
            tools("fit-velocity", "--data", "d.npy", "--labels", "dl.npy", "--steps", 3, "--batch", 16, "--hidden", "16", "--ema", 0.5, "-q", "-o", "c.safetensors")
            check_tool_field(tools, "fit-velocity cmlp", "c.safetensors", rng.standard_normal((4, 2)).astype(np.float32), np.array([0, 1, 2, 3]))
            tools("sample-noise", "-n", 16, "--shape", "1,4,4", "--seed", 2, "-o", tools.path("img.npy"))
            np.save(tools.path("il.npy"), (np.arange(16) % 2).astype(np.int64))
            xi = rng.standard_normal((3, 1, 4, 4)).astype(np.float32)
            tools("fit-velocity", "--data", "img.npy", "--labels", "il.npy", "--arch", "dit", "--width", 8, "--depth", 1, "--heads", 2, "--patch", 2, "--steps", 2, "--batch", 4, "--ema", 0.5, "-q", "-o", "dit.safetensors")
            check_tool_field(tools, "fit-velocity dit", "dit.safetensors", xi, np.array([0, 1, 2]))
            tools("fit-velocity", "--data", "img.npy", "--labels", "il.npy", "--arch", "unet", "--channels", "4,8", "--blocks", 1, "--steps", 2, "--batch", 4, "--ema", 0.5, "-q", "-o", "unet.safetensors")
            check_tool_field(tools, "fit-velocity unet", "unet.safetensors", xi, np.array([2, 1, 0]))
            tools("fit-vae", "--data", "img.npy", "--channels", "4,8", "--latent-channels", 2, "--blocks", 1, "--steps", 2, "--batch", 4, "--scale-samples", 16, "-q", "-o", "v.safetensors")
            vae = flowpipe.load(tools.path("v.safetensors"))
            tools("encode-vae", "img.npy", "--model", "v.safetensors", "--mean", "-q", "-o", "vz.npy")
            z = np.load(tools.path("vz.npy"))
            compare("fit-vae encode", z, vae.encode(np.load(tools.path("img.npy")), dtype=np.float64))
            tools("decode-vae", "vz.npy", "--model", "v.safetensors", "-q", "-o", "vd.npy")
            compare("fit-vae decode", np.load(tools.path("vd.npy")), vae.decode(z, dtype=np.float64))
            with open(tools.path("words.txt"), "w") as fh:
                fh.write("ab\nba\nabab\nbba\n" * 8)
            tools("import-text", "words.txt", "--vocab-out", "vocab.json", "-o", "tok.npy")
            np.save(tools.path("tl.npy"), (np.arange(32) % 2).astype(np.int64))
            tools("fit-denoiser", "--data", "tok.npy", "--vocab", "vocab.json", "--labels", "tl.npy", "--width", 8, "--depth", 1, "--heads", 2, "--steps", 3, "--batch", 8, "--ema", 0.5, "-q", "-o", "den.safetensors")
            den = flowpipe.load(tools.path("den.safetensors"))
            tok = np.load(tools.path("tok.npy"))[:5]
            tok[0, :2] = len(den.resolved["vocab"]["symbols"]) - 1
            np.save(tools.path("tok5.npy"), tok)
            np.save(tools.path("tl5.npy"), np.array([0, 1, 2, 1, 0], dtype=np.int64))
            tools("eval-field", "tok5.npy", "--model", "den.safetensors", "--labels", "tl5.npy", "--t", T, "-q", "-o", "den-l.npy")
            ref = np.load(tools.path("den-l.npy"))
            compare("fit-denoiser logits", ref, den.denoiser_logits(tok, T, np.array([0, 1, 2, 1, 0]), dtype=np.float64))
            torch_check("fit-denoiser logits", ref, den, lambda net: net(torch.from_numpy(tok), T, torch.tensor([0, 1, 2, 1, 0])))
        except Exception as e:
            report("tool-written models", False, f"{type(e).__name__}: {e}")

        try:
            roundtrip(tools, rng)
        except Exception as e:
            report("save/load round trip", False, f"{type(e).__name__}: {e}")

    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed: {', '.join(FAILURES)}")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
