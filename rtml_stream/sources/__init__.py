"""Market-data sources: every one yields the shared Trade and BookUpdate types."""
