"""wsched: a virtual-workspace scheduler (see README.md)."""
