"""Errors that rkbench reports to a user as one line (the CLI exits 2 on these)."""


class RkbenchError(Exception):
    """A problem with the user's input or environment, worth one clear line, not a traceback."""


class ConfigError(RkbenchError):
    """A suite, an override or a name that does not validate."""


class UnknownNameError(ConfigError, KeyError):
    """A name that no registry holds."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class DataUnavailableError(RkbenchError):
    """A dataset or checkpoint that cannot be found or fetched (offline, not cached)."""


class AttackError(RkbenchError):
    """An attack that returned nothing usable: an error, never a silent 0 %."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) during ``rkbench run``: raised in the main process where Ctrl-C raises
    KeyboardInterrupt, so one path stops both; ``signum`` gives the exit code (128 + signum)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
