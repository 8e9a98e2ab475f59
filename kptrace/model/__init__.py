"""Frozen data model shared by parsers, walkers, checks and renderers; imports nothing else from kptrace."""
