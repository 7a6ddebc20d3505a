"""The review service: cases in a database (SQLite embedded, PostgreSQL for a lab), jobs run by
workers, a REST API and the browser review screen. ``leukodx serve`` / ``worker`` / ``db`` / ``users``."""
