"""Multi-turn environments (`rollout.env`): the API a user's class implements (`api`), the settings of an
episode (`config`), and the built-in calculator environment (`calc`). Plain Python, no Ray; the rollout
engines run the episodes (`alignray.rollout.episodes`)."""
