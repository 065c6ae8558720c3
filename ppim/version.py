"""The ppim version (its own module so that any module can import it without importing ppim)."""
__version__ = "2.0.0"
