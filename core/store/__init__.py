"""The results store: schema and writes (`db`), Optuna's journal in the same database, the dashboard's reads."""
