"""Measurement methods: cuda (real, isolated), estimate (meta device), cpu (real)."""
