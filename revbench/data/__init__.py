"""Data files shipped with revbench (published figures)."""
