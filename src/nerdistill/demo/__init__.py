"""Offline stand-ins for the user's data and teacher: a sample corpus and tiny CamemBERT teachers."""
from nerdistill.demo.corpus import LabelledPhrase, Span, generate, write_corpus
from nerdistill.demo.teacher import build_demo_teacher, random_teacher, score_teacher, train_tokenizer

__all__ = ["LabelledPhrase", "Span", "build_demo_teacher", "generate", "random_teacher", "score_teacher",
           "train_tokenizer", "write_corpus"]
