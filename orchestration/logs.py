"""The console logger of lensless runs: Dagster's own, but on the command line a failed step
shows its error without Dagster's stack trace (`lensless -v` shows it). Runs that the UI or
the daemon launch log as Dagster does; every run's event log keeps the stack trace."""

import logging

import dagster as dg

# set by `lensless` (orchestration/cli.py) unless it runs with -v
BRIEF_FAILURES = False
STACK = "\nStack Trace:"


class _WithoutStackTrace(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if BRIEF_FAILURES:
            message = record.getMessage()
            if STACK in message:
                record.msg, record.args = message.split(STACK)[0].rstrip() + "\n(rerun with -v for the stack trace)", ()
        return True


@dg.logger(config_schema={"log_level": dg.Field(str, is_required=False, default_value="INFO"),
                          "name": dg.Field(str, is_required=False, default_value="dagster")},
           description="Dagster's colored console logger; on the lensless command line without its stack traces")
def console(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = dg.colored_console_logger.logger_fn(init_context)
    for handler in logger.handlers:
        handler.addFilter(_WithoutStackTrace())
    return logger
