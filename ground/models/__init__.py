"""satedge ground.models."""
