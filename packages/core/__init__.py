"""forecache.core: the shared reuse and forecast runtime."""
