"""One architecture family per folder, each with the same anatomy (check → prepare → run → result)."""
