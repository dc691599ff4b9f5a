"""Market history: imported trades and validated candles, per (day, market), with checks."""
