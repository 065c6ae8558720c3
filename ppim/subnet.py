"""Sub-networks of super models: the :class:`Subnet` value and the protocol models offer.

A sub-network is one (img_size, keep_ratio) point of a SuperViT: the image is resized to img_size
(one positional embedding per size) and after the keep blocks only ceil(keep_ratio * N) of the N
patch tokens go on. Written "224x0.7" (its key: command lines, result files, the published tables),
``{"img_size": 224, "keep_ratio": 0.7}`` in JSON, ``Subnet(224, 0.7)`` in code (a named tuple, so it
unpacks and compares as ``(224, 0.7)``; ordered by img_size, then keep_ratio).

The one rule (:meth:`Subnet.check`), the same per call (``model(x, img_size=..., keep_ratio=...)``),
in ``model.set_subnet`` and for every list a tool is given:

* img_size is one of the model's sizes (``model.img_sizes``: 128, 160, 192, 224 for the published
  models), because each size has its own learned positional embedding, as in the official code,
  which looks the size up in its list;
* keep_ratio is a real number in (0, 1]. The official blocks keep ceil(keep_ratio * N) tokens for
  any such ratio, so every ratio runs; only the published ones (``model.keep_ratios``: 0.5, 0.7, 1)
  have published accuracy.

The protocol, on every ppim model (models.base.TokenViT; empty for models without sub-networks):
``model.subnets`` (the published points, grid by grid; [] if none), ``model.subnet`` (the current
one, or None), ``model.set_subnet(img_size, keep_ratio)``, ``model.check_subnet(img_size,
keep_ratio)`` and ``model.token_plan(img_size, keep_ratio)`` (what the FLOP counter asks).
:func:`subnets_of` and :func:`current_subnet` read it from any layer.

Imports nothing of Paddle, and of ppim only the leaves errors and registry.
"""
from __future__ import annotations

import numbers
from typing import Any, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Union

from .errors import InputError
from .registry import model_name

__all__ = ["Subnet", "SubnetLike", "current_subnet", "parse_subnets", "subnets_of"]


class Subnet(NamedTuple):
    """One sub-network: ``Subnet(224, 0.7)``; see the module docstring for the rule."""

    img_size: int
    keep_ratio: float

    @classmethod
    def parse(cls, text: str) -> "Subnet":
        """"224x0.7" -> Subnet(224, 0.7) (not yet checked against a model: see :meth:`check`)."""
        try:
            size, ratio = str(text).strip().lower().split("x")
            return cls(int(size), float(ratio))
        except ValueError:
            raise ValueError(f"sub-network {text!r}: expected IMG_SIZExKEEP_RATIO, e.g. 224x1.0 or 128x0.5") from None

    @classmethod
    def of(cls, value: "SubnetLike") -> "Subnet":
        """A Subnet from a Subnet, an (img_size, keep_ratio) pair, a "224x0.7" key or an
        {"img_size", "keep_ratio"} dict; values keep their types until :meth:`check`."""
        if isinstance(value, Subnet):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, Mapping):
            return cls(value["img_size"], value["keep_ratio"])
        img_size, keep_ratio = value
        return cls(img_size, keep_ratio)

    @property
    def key(self) -> str:
        """"224x0.7": the key of results files and of the published tables (cfg weights subnet_top1)."""
        return f"{int(self.img_size)}x{float(self.keep_ratio)}"

    def as_dict(self) -> dict:
        """{"img_size": 224, "keep_ratio": 0.7}, as results files and benchmark rows write it."""
        return {"img_size": int(self.img_size), "keep_ratio": float(self.keep_ratio)}

    def check(self, img_sizes: Sequence[int], keep_ratios: Sequence[float] = ()) -> "Subnet":
        """This sub-network as (int, float) if a model with positional embeddings for ``img_sizes``
        runs it, else a ValueError naming the rule (``keep_ratios``: the published ones, named in the
        message only)."""
        img_size, keep_ratio = self
        if isinstance(img_size, bool) or img_size not in img_sizes:
            sizes = ", ".join(str(s) for s in img_sizes)
            raise ValueError(f"img_size {img_size!r} has no positional embedding; this model's sub-networks take "
                             f"img_size in {sizes}")
        if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, numbers.Real) or not 0 < keep_ratio <= 1:
            published = f" (published: {', '.join(str(r) for r in keep_ratios)})" if keep_ratios else ""
            raise ValueError(f"keep_ratio must be a number in (0, 1]{published}, got {keep_ratio!r}")
        return Subnet(int(img_size), float(keep_ratio))

    def __str__(self) -> str:
        return self.key


#: What functions taking a sub-network accept (see Subnet.of).
SubnetLike = Union[Subnet, str, Sequence[Any], Mapping[str, Any]]


def subnets_of(model: Any) -> List[Subnet]:
    """The sub-networks ``model`` offers (its ``subnets``); [] for a model without any (every
    non-super ppim model, and any other layer)."""
    return [Subnet.of(s) for s in getattr(model, "subnets", None) or ()]


def current_subnet(model: Any) -> Optional[Subnet]:
    """The sub-network ``model`` runs when given none (its ``subnet``), or None without sub-networks."""
    subnet = getattr(model, "subnet", None)
    return None if subnet is None else Subnet.of(subnet)


def parse_subnets(spec: Union[str, Iterable[SubnetLike], None], model: Any = None,
                  name: str = "subnets=") -> Optional[List[Subnet]]:
    """The one parser of sub-network lists: "all" -> every sub-network of ``model`` (or None without
    a model: "all of them", for a tool that has not built its model yet); "224x1.0,128x0.5" or a
    sequence of Subnet-likes -> that list, duplicates once, order kept; None -> None (the current
    sub-network). With ``model`` each is checked by the rule, and a model without sub-networks is
    refused. Errors are InputError (a ValueError) naming ``name`` (a command line passes its flag)."""
    if spec is None:
        return None
    try:
        if isinstance(spec, str):
            if spec.strip().lower() == "all":
                if model is None:
                    return None
                spec = subnets_of(model)
            else:
                spec = [Subnet.parse(item) for item in filter(None, (part.strip() for part in spec.split(",")))]
        subnets = [Subnet.of(s) for s in spec]
        if model is not None:
            if not subnets_of(model):
                raise ValueError(f"{name} needs a super model (super_deit_s, super_lvvit_s); "
                                 f"{model_name(model)} has no sub-networks")
            subnets = [model.check_subnet(*s) for s in subnets]
    except (TypeError, KeyError, ValueError) as error:
        raise InputError(f"{name} {error}" if not str(error).startswith(name) else str(error)) from None
    if not subnets:
        raise InputError(f"{name} no sub-networks in {spec!r}")
    return list(dict.fromkeys(subnets))
