"""Offline stand-ins for the user's data and teacher: a sample corpus and a tiny trained teacher."""
from nerdistill.demo.corpus import LabelledPhrase, Span, generate, write_corpus

__all__ = ["LabelledPhrase", "Span", "generate", "write_corpus"]
