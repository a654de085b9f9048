"""Projections onto constraint sets (placeholder: being written)."""
