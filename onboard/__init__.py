"""satedge onboard."""
