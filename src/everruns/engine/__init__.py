"""The engine: workers that lease runs and execute their atoms."""
