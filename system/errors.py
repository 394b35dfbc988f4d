"""Errors a user can act on. The CLI prints these without a traceback, also when they come from inside a Ray actor."""


class AlignrayError(Exception):
    """Base for every error whose message alone tells the user what to fix."""


class ConfigError(AlignrayError):
    """A config file or override names an unknown field or holds a bad value."""


class DataError(AlignrayError):
    """An input file (prompts, preferences) is malformed; the message names file, line and field."""


class SchemaError(AlignrayError):
    """An Arrow batch crossing an actor boundary does not match its schema; the message names the column."""


class RewardError(AlignrayError):
    """A reward scorer raised or returned a non-finite value; the message names the scorer and the sample id."""
