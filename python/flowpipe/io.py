"""Reading and writing flowpipe model files (`.safetensors` with the config in the metadata)."""

import json
import os
import struct

import numpy as np

FORMAT = "flowpipe-model/1"
EMA_PREFIX = "ema."
OPTIMISER_PREFIXES = ("adam.m.", "adam.v.")

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def _read_raw(path):
    """(metadata, {name: array}) straight from the bytes (also reads BF16, as float32)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    body = memoryview(data)[8 + n :]
    meta = header.pop("__metadata__", None) or {}
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        raw = body[start:end]
        dt = info["dtype"]
        if dt == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif dt in _DTYPES:
            a = np.frombuffer(raw, dtype=np.dtype(_DTYPES[dt]).newbyteorder("<"))
        else:
            raise ValueError(f"{path}: tensor '{name}' has an unsupported dtype {dt}")
        tensors[name] = a.reshape(info["shape"]).copy()
    return meta, tensors


def read_file(path):
    """(config, {name: array}) of every tensor in the file (raw, EMA and optimiser moments)."""
    meta, tensors = _read_raw(path)
    if "flowpipe" not in meta:
        raise ValueError(f"{path}: not a flowpipe model (no 'flowpipe' config in its metadata)")
    return json.loads(meta["flowpipe"]), tensors


def select_weights(tensors, weights="auto"):
    """The network's weights by plain name, as float32 (the tools convert float16, bfloat16 and
    float64 on load): the `ema.<name>` copies when the file has any (weights="auto", as the tools
    do) or "ema"; the raw ones with "raw". Optimiser moments are left out."""
    if weights not in ("auto", "raw", "ema"):
        raise ValueError(f"weights must be auto, raw or ema, got {weights!r}")
    has_ema = any(k.startswith(EMA_PREFIX) for k in tensors)
    if weights == "ema" and not has_ema:
        raise ValueError("the model file has no EMA weights")
    use_ema = has_ema and weights != "raw"
    out = {}
    for k, v in tensors.items():
        if k.startswith(OPTIMISER_PREFIXES):
            continue
        if k.startswith(EMA_PREFIX):
            if use_ema:
                out[k[len(EMA_PREFIX) :]] = v
        elif not use_ema:
            out[k] = v
    return {k: v.astype(np.float32) if v.dtype.kind == "f" and v.dtype != np.float32 else v for k, v in out.items()}


def _to_numpy(v):
    if hasattr(v, "detach"):  # a torch tensor
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            v = v.float()
        v = v.numpy()
    return np.ascontiguousarray(np.asarray(v, dtype=np.float32))


def save(path, config, tensors, check=True):
    """Writes a model file the tools read.

    config: the config dict (`kind`, `arch`, `data_shape`, ... see docs/model-format.md); it is
    stored as JSON under `__metadata__["flowpipe"]`, with `format` stamped when absent.
    tensors: {name: array} (NumPy arrays or torch tensors; written as float32). Names may carry
    `ema.` (and, in a checkpoint, `adam.m.` / `adam.v.`) prefixes. With check=True the names and
    shapes are checked against the config's network first, as the tools will.
    """
    from safetensors.numpy import save_file

    config = dict(config)
    if "kind" not in config:
        raise ValueError("a model config must have a 'kind'")
    config.setdefault("format", FORMAT)
    arrays = {str(k): _to_numpy(v) for k, v in tensors.items()}
    for k, v in arrays.items():
        if not np.all(np.isfinite(v)):
            raise ValueError(f"the tensor '{k}' holds a non-finite value")
    from .config import ARCHS, check_tensors, net_config

    if check and net_config(config).get("arch") in ARCHS:
        plain = {k: v for k, v in arrays.items() if not k.startswith((EMA_PREFIX,) + OPTIMISER_PREFIXES)}
        has_ema = any(k.startswith(EMA_PREFIX) for k in arrays)
        if plain or not has_ema:  # the tools read only the ema. copies when there are any
            check_tensors(config, plain)
        if has_ema:
            check_tensors(config, select_weights(arrays, "ema"))
    text = json.dumps(config, separators=(",", ":"))
    path = os.fspath(path)
    tmp = path + ".tmp"
    save_file(dict(sorted(arrays.items())), tmp, metadata={"flowpipe": text})
    os.replace(tmp, path)


class Model:
    """A loaded model file.

    config: the file's config (dict); net_config: the network's (a checkpoint's `model`);
    tensors: the weights by plain name (EMA weights when the file has them, by default);
    all_tensors: everything in the file.
    """

    def __init__(self, config, tensors, all_tensors=None, name=None):
        from .config import ARCHS, net_config, resolve

        self.config = config
        self.net_config = net_config(config)
        self.arch = self.net_config.get("arch")
        self.tensors = tensors
        self.all_tensors = all_tensors if all_tensors is not None else tensors
        self.name = name
        # Defaults filled in (None for an architecture this package does not evaluate).
        self.resolved = resolve(self.net_config) if self.arch in ARCHS else None

    def __repr__(self):
        n = sum(v.size for v in self.tensors.values())
        return f"<flowpipe.Model {self.name or ''} kind={self.config.get('kind')} arch={self.arch} params={n}>"

    # Vector fields: mlp, cmlp, unet, dit
    @property
    def data_shape(self):
        src = self.resolved or self.net_config
        return list(src["data_shape"])

    @property
    def num_classes(self):
        src = self.resolved or self.net_config
        return int(src.get("num_classes", 0) or 0)

    @property
    def parametrisation(self):
        return self.net_config.get("parametrisation")

    def forward(self, x, t, y=None, dtype=np.float32):
        """The network's raw output at x (N, ...data_shape), t (N,) or one value, labels y (N,)
        int in 0..num_classes (num_classes, or None, is the null label): shaped like x. This is
        what `eval-field --what <the model's parametrisation>` prints."""
        from .numpy_nets import field_forward

        return field_forward(self.net_config, self.tensors, x, t, y, dtype)

    __call__ = forward

    # VAE
    def posterior(self, x, dtype=np.float32):
        """(mean, logvar) of q(z | x) over unscaled latents, each (N, k, h, w)."""
        from .numpy_nets import vae_posterior

        return vae_posterior(self.net_config, self.tensors, x, dtype)

    def encode(self, x, dtype=np.float32):
        """Latents as `encode-vae --mean` writes them: scale_factor * posterior mean."""
        mean, _ = self.posterior(x, dtype=np.float64)
        return (self.resolved["scale_factor"] * mean).astype(dtype)

    def decode(self, z, dtype=np.float32):
        """Images from latents as `decode-vae` reads them (scaled: divided by scale_factor)."""
        from .numpy_nets import vae_decode

        z = np.asarray(z, dtype=np.float64) / self.resolved["scale_factor"]
        return vae_decode(self.net_config, self.tensors, z, dtype)

    # Classifier
    def features(self, x, dtype=np.float32):
        from .numpy_nets import cnn_features

        return cnn_features(self.net_config, self.tensors, x, dtype)

    def logits(self, x, dtype=np.float32):
        from .numpy_nets import cnn_logits

        return cnn_logits(self.net_config, self.tensors, x, dtype)

    # Discrete denoiser (token-transformer)
    def denoiser_logits(self, x, t, y=None, dtype=np.float32):
        """Logits (N, L, K) at token ids x (N, L), as `eval-field` writes them for a denoiser."""
        from .numpy_nets import denoiser_logits

        return denoiser_logits(self.net_config, self.tensors, x, t, y, dtype)

    def to_torch(self):
        """A torch.nn.Module with these weights (needs PyTorch)."""
        from .torch_nets import build

        return build(self.net_config, self.tensors)


def load(path, weights="auto"):
    """Loads a model file: a Model with .config, .tensors (EMA weights preferred) and forwards."""
    config, tensors = read_file(path)
    return Model(config, select_weights(tensors, weights), tensors, name=os.fspath(path))
