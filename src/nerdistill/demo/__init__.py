"""Offline stand-ins for the user's data and teacher: a sample corpus (`demo.corpus`) and tiny CamemBERT
teachers (`demo.teacher`)."""
