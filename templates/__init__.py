"""Ticket templates and chime sounds (package data)."""
