"""Offline side: corpora, feature front-ends, the papers' experiments and model export."""
