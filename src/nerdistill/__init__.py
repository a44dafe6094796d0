"""nerdistill: distil, prune and gate a French NER transformer into a small CRF student.

The package imports nothing, so each pipeline stage depends only on the modules it uses. The
public API is named by module path: `from nerdistill.tagger.load import load_tagger` (README).
"""
