"""The study report: tables and figures from a workdir's results tables (numpy + matplotlib only)."""
