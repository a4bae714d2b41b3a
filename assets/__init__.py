"""Dagster assets, checks, resources and IO. Pure helpers beside them do not import dagster."""
