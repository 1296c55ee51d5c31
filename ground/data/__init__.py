"""satedge ground.data."""
