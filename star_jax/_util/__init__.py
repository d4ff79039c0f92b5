"""Small internal helpers shared across packages."""
