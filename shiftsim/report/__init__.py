"""Comparative reports of robustness studies (placeholder while being written)."""
