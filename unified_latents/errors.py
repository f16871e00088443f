"""Errors a user can cause. The CLI prints their message alone (no traceback unless --debug)."""


class UserError(Exception):
    """A problem with the user's input; the message names the thing and the fix."""


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class ArtifactError(UserError):
    pass


class ResumeError(UserError):
    pass


class TrainingError(UserError):
    pass
