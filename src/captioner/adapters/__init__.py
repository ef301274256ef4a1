"""Concrete technologies behind the domain's ports; each module implements one port."""
