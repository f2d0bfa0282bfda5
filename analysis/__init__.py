"""Rebuild the paper's tables and figures from the results database."""
