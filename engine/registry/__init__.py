"""SQLite registry: teams and API keys now; sources, models, tasks and usage later."""
