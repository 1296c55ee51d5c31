"""satedge engines.runners."""
