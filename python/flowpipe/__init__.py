"""flowpipe model files in Python: read the `.safetensors` models the flowpipe tools write,
evaluate them with NumPy (or PyTorch), and write models the tools read.

    import flowpipe
    m = flowpipe.load("out/latent/flow.safetensors")
    v = m.forward(x, t=0.3, y=labels)       # what `eval-field --what velocity` prints
    flowpipe.save("flow.safetensors", config, tensors)

The contract is docs/model-format.md in the flowpipe repository.
"""

from .config import ARCHS, ConfigError, check_tensors, expected_shapes, resolve
from .io import FORMAT, Model, load, read_file, save, select_weights
from .numpy_nets import cnn_logits, denoiser_logits, field_forward, vae_decode, vae_posterior

__version__ = "0.1.0"

__all__ = [
    "ARCHS",
    "ConfigError",
    "FORMAT",
    "Model",
    "check_tensors",
    "cnn_logits",
    "denoiser_logits",
    "expected_shapes",
    "field_forward",
    "load",
    "read_file",
    "resolve",
    "save",
    "select_weights",
    "vae_decode",
    "vae_posterior",
]
