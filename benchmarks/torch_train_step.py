"""The PyTorch reference LV-ViT's training step, the peer of ``ppim-benchmark --train`` (which loads
this module from a checkout when torch is installed): the same step as ppim.training.step_timing's
(AdamW, soft-target cross-entropy, a fixed random batch), timed by phase."""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from torch_reference import TorchLVViT  # noqa: E402


def torch_step_factory(amp=None, threads=None):
    """A StepFactory (see ppim.training.step_timing) for torch eager, fp32 or ``amp="bfloat16"``
    autocast on the CPU, mirroring the dimensions of the ppim LV-ViT it is given."""

    def factory(model, batch_size):
        import torch

        if threads:
            torch.set_num_threads(threads)
        if type(model).__name__ != "LVViT":
            raise RuntimeError("the PyTorch reference here is LV-ViT only")
        block = model.blocks[0]
        size = model.pretrained_cfg["input_size"][-1]
        torch.manual_seed(0)
        net = TorchLVViT(img_size=size, dim=block.attn.qkv.weight.shape[0], depth=len(model.blocks),
                         heads=block.attn.num_heads, skip_lam=block.skip_lam,
                         stem=model.patch_embed.conv1.weight.shape[0], classes=model.num_classes).train()
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.05)
        images = torch.randn(batch_size, 3, size, size)
        targets = torch.nn.functional.one_hot(torch.randint(0, model.num_classes, (batch_size,)),
                                              model.num_classes).float()

        def step():
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bfloat16"):
                logits = net(images)
            loss = torch.sum(-targets * torch.log_softmax(logits.float(), dim=-1), dim=-1).mean()
            float(loss.detach())
            forward = time.perf_counter()
            loss.backward()
            backward = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return forward - start, backward - forward, time.perf_counter() - backward

        return step

    return factory
