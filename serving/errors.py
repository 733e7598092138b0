"""The one error type the server turns into a 4xx JSON answer."""


class BadRequest(ValueError):
    """A request the server refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status
