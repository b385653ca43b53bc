"""Answering "where did this come from": lineage of outputs, one object's journey."""
