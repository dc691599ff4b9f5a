"""rtml_stream: the streaming sidecar (sources -> pipeline -> online/offline stores)."""
