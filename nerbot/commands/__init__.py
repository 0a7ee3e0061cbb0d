"""Chat commands: a declared registry, a router, and the handlers (one module per area)."""
