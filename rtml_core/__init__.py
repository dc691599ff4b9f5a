"""rtml's shared core: the one definition of market data types, candles, features and stores."""
