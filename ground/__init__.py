"""satedge ground."""
