"""satedge sim."""
