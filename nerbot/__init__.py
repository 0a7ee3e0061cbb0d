"""nerbot: keeps a Matrix community safe from lost history and ghost devices."""
__version__ = "0.1.0"
