"""Database layer: SQLAlchemy 2 models, engine set-up and alembic migrations."""
