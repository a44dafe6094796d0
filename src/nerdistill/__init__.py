"""nerdistill: distil, prune and gate a French NER transformer into a small CRF student."""
from __future__ import annotations

from typing import Any

__all__ = ["NerTagger"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy, so `nerdistill --help` and the light stages do not import torch and transformers.
    if name == "NerTagger":
        from nerdistill.tagger import NerTagger

        return NerTagger
    raise AttributeError(f"module 'nerdistill' has no attribute {name!r}")
