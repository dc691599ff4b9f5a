"""HTTP and WebSocket handlers: thin, they call ``api.serving.PredictionService``."""
