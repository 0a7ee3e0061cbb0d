"""Pure decision logic: no I/O, no clock reads (``now`` is a parameter), no Matrix libraries."""
