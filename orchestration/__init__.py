"""Definitions, jobs, sensors, schedules, instance set-up and the `lensless` command line."""
