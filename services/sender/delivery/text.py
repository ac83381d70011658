"""A server's words as the database and JSON take them."""


def clean_text(text: str) -> str:
    """aiosmtplib keeps bytes that are not UTF-8 as surrogates, and PostgreSQL refuses NUL;
    a record that can never be written would hold a sent mail's job for ever."""
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
