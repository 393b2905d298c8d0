"""store-agent: the in-store print-and-alert agent."""

__version__ = "0.1.0"
