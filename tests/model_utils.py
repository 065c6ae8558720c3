"""Weights helpers shared by the tests."""
import math

import numpy as np
import paddle


def randomize(model, seed=0):
    """Seeded, well-conditioned weights: fan-in scaled matrices (qkv a little larger, so attention is
    peaked and input-dependent), non-trivial norms, biases, embeddings and BN statistics. Returns
    the model in eval mode."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, value in model.state_dict().items():
        shape = list(value.shape)
        if name.endswith("_variance"):
            new = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(("_mean", "bias")):
            new = 0.1 * rng.standard_normal(shape)
        elif "norm" in name or ".bn" in name:
            new = 1.0 + 0.2 * rng.standard_normal(shape)
        elif len(shape) == 2:  # Linear, Paddle layout [in, out]
            new = rng.standard_normal(shape) * (1.5 if "qkv" in name else 1.0) / math.sqrt(shape[0])
        elif len(shape) == 4:  # conv [out, in, kh, kw]
            new = rng.standard_normal(shape) / math.sqrt(np.prod(shape[1:]))
        else:  # cls token, positional embeddings
            new = 0.5 * rng.standard_normal(shape)
        state[name] = paddle.to_tensor(new.astype("float32"))
    model.set_state_dict(state)
    model.eval()
    return model


def torch_state(model):
    """A ppim model's weights in the official PyTorch layout (Linear [out, in], BN running stats),
    written independently of ppim.weights.torch_layout.to_paddle_layout (which maps the other way)."""
    import torch

    linear = {f"{name}.weight" for name, layer in model.named_sublayers() if isinstance(layer, paddle.nn.Linear)}
    state = {}
    for key, value in model.state_dict().items():
        tensor = torch.from_numpy(value.numpy())
        if key.endswith("._mean"):
            key = key[:-len("._mean")] + ".running_mean"
        elif key.endswith("._variance"):
            key = key[:-len("._variance")] + ".running_var"
        elif key in linear:
            tensor = tensor.t().contiguous()
        state[key] = tensor
    return state
