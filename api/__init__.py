"""rtml's prediction API (Litestar): ``from api.app import create_app``."""
