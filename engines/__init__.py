"""satedge engines."""
