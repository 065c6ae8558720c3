"""SuperViT training: one step trains four sub-networks on one batch (the official loops'
main_lvvit.py and deit/engine.py), one backward each, then one optimizer step by the loop.

Sub-networks, drawn per step: (224, 1), (224, r), (s, 1), (s, r') with s from the smaller sizes
and r, r' from the keep ratios below 1 (a ``random.Random``, drawn as the official code draws).

LV-ViT (token labeling, MixToken): one box is drawn on the 14 x 14 grid and scaled to each
sub-network's grid. (224, 1): the token-label loss; (s, 1): soft-target CE against the cls target
that loss mixed; (224, r) and (s, r'): KL divergence (batchmean) to the detached softmax of the
(224, 1) cls logits.
DeiT: the criterion for (224, 1) and (s, 1); KL to the preceding keep-1 output for the others.
"""

from __future__ import annotations

import random
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import paddle
import paddle.nn.functional as F

from ..layers import Box, random_box
from ..models.supervit import scale_box
from ..subnet import Subnet
from .engine import unwrapped_step
from .losses import TokenLabelCrossEntropy, kl_div_batchmean, soft_target_cross_entropy

__all__ = ["training_subnets", "mixtoken_boxes", "SuperStep"]



def training_subnets(img_sizes: Sequence[int], keep_ratios: Sequence[float],
                     rng: random.Random = random) -> List[Subnet]:  # type: ignore[assignment]
    """The sub-networks of one step, drawn in the official order (keep ratio, size, keep ratio):
    (full, 1), (full, r), (s, 1), (s, r'). A model without smaller sizes or without keep ratios
    below 1 trains the ones it has."""
    full = max(img_sizes)
    ratios = [float(r) for r in keep_ratios if r < 1]
    sizes = [int(s) for s in img_sizes if s != full]
    subnets = [Subnet(full, 1.0)]
    if ratios:
        subnets.append(Subnet(full, rng.choice(ratios)))
    if sizes:
        size = rng.choice(sizes)
        subnets.append(Subnet(size, 1.0))
        if ratios:
            subnets.append(Subnet(size, rng.choice(ratios)))
    return subnets


def mixtoken_boxes(img_sizes: Sequence[int], patch_size: int = 16) -> Dict[int, Box]:
    """One MixToken box drawn on the full grid (numpy's global generator, as the official loop)
    and scaled to every sub-network size: {img_size: Box}."""
    full = max(img_sizes) // patch_size
    box = random_box(full, full)
    return {int(s): scale_box(box, s // patch_size, full) for s in img_sizes}


class SuperStep:
    """The per-batch work of SuperViT training, the Trainer's ``step`` hook:
    ``step(model, images, targets, backward)`` runs the four sub-networks through
    ``forward_train``, calls ``backward(loss)`` once for each (the loop's ``loss.backward()`` or
    ``scaler.scale(loss).backward()``) and returns the full sub-network's loss (the official loops
    log it); ``last_losses`` holds all four. The loop then steps the optimizer once.

    criterion: LV-ViT: a TokenLabelCrossEntropy, with ``targets`` (a TokenLabelTargets) turning
    the loader's labels into its target; DeiT: any loss of (logits, target).
    rng: draws the sub-networks; give every process the same seed so they train the same ones
    (under DataParallel the gradients of one parameter set are averaged).
    """

    def __init__(self, criterion: Callable, targets: Optional[Callable] = None,
                 rng: Optional[random.Random] = None):
        self.criterion = criterion
        self.targets = targets
        self.rng = rng or random.Random(0)
        self.last_losses: List[paddle.Tensor] = []

    def state_dict(self) -> Dict[str, object]:
        """The draw generator's state (the Trainer checkpoints it, so a resumed run draws on)."""
        return {"rng": self.rng.getstate()}

    def set_state_dict(self, state: Dict[str, object]) -> None:
        def tuples(value):  # the checkpoint round trip may turn the state's tuples into lists
            return tuple(tuples(v) for v in value) if isinstance(value, (list, tuple)) else value

        self.rng.setstate(tuples(state["rng"]))

    def draw(self, model: paddle.nn.Layer) -> Tuple[List[Subnet], Dict[int, Box]]:
        """This step's sub-networks and MixToken boxes."""
        subnets = training_subnets(model.img_sizes, model.keep_ratios, self.rng)
        return subnets, mixtoken_boxes(model.img_sizes, model.patch_size)

    def __call__(self, model: paddle.nn.Layer, images: paddle.Tensor, targets: paddle.Tensor,
                 backward: Callable[[paddle.Tensor], None], subnets: Optional[Sequence[Subnet]] = None,
                 boxes: Optional[Dict[int, Box]] = None) -> paddle.Tensor:
        if self.targets is not None:
            targets = self.targets(targets)

        def work(layer: paddle.nn.Layer) -> List[paddle.Tensor]:
            drawn, drawn_boxes = self.draw(layer)
            chosen = list(subnets or drawn)
            if getattr(layer, "aux_weight", None) is None:
                return self._deit(layer, images, targets, backward, chosen)
            if not isinstance(self.criterion, TokenLabelCrossEntropy):
                raise TypeError("SuperViT over LV-ViT trains with TokenLabelCrossEntropy")
            return self._lvvit(layer, images, targets, backward, chosen, boxes or drawn_boxes)

        self.last_losses = unwrapped_step(model, work)
        return self.last_losses[0]

    def _lvvit(self, model, images, target, backward, subnets, boxes) -> List[paddle.Tensor]:
        losses: List[paddle.Tensor] = []
        teacher = mixed_target = None
        for index, (img_size, keep_ratio) in enumerate(subnets):
            out = model.forward_train(images, img_size=img_size, keep_ratio=keep_ratio, bbox=boxes[img_size])
            if index == 0:  # the full sub-network: (cls, aux, box)
                loss, mixed_target = self.criterion.loss_and_target(out, target)
                teacher = F.softmax(out[0].detach().astype("float32"), axis=-1)
            elif keep_ratio == 1:
                loss = soft_target_cross_entropy(out, mixed_target)
            else:
                loss = kl_div_batchmean(out, teacher)
            backward(loss)
            losses.append(loss.detach())
        return losses

    def _deit(self, model, images, target, backward, subnets) -> List[paddle.Tensor]:
        losses: List[paddle.Tensor] = []
        teacher = None
        for img_size, keep_ratio in subnets:
            out = model.forward_train(images, img_size=img_size, keep_ratio=keep_ratio)
            if keep_ratio == 1:
                loss = self.criterion(out, target)
                teacher = F.softmax(out.detach().astype("float32"), axis=-1)
            else:
                loss = kl_div_batchmean(out, teacher)
            backward(loss)
            losses.append(loss.detach())
        return losses
