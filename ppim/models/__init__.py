"""Model families; importing this registers every constructor (and tunes eager CPU math once:
ppim.mathtune)."""
from .lvvit import *  # noqa: F401,F403
from .lvvit import __all__ as _lvvit_all
from .supervit import *  # noqa: F401,F403
from .supervit import __all__ as _supervit_all

__all__ = list(_lvvit_all) + list(_supervit_all)

from ..mathtune import tune_after_paddle  # noqa: E402  (Paddle is loaded by now)

tune_after_paddle()
