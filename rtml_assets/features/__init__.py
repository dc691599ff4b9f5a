"""Offline features: the indicator table over validated candles, with checks."""
