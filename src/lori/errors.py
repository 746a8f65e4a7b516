"""The one error type users see for bad input: it always names the file/line or config key and what to do."""


class LoriError(Exception):
    """Bad input or state the user can fix. The CLI prints the message without a traceback and exits 2."""


class DataError(LoriError):
    """A data file that cannot be read. The message names the file and (1-based) line number."""

    def __init__(self, path, line: int | None, problem: str, hint: str = ""):
        where = f"{path}" if line is None else f"{path}:{line}"
        msg = f"{where}: {problem}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)
        self.path, self.line, self.problem = str(path), line, problem


class ConfigError(LoriError):
    """A config key or value that is not allowed. The message names the dotted key and what is allowed."""


class WriteError(LoriError):
    """A file or folder that could not be written (a full disk, no permission, a read-only file system). The
    message names the path and what is still intact; ``error`` is the OSError behind it."""

    def __init__(self, message: str, error: OSError):
        super().__init__(message)
        self.error = error
