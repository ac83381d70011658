"""Who is signed in: the same JWT the APIs take, kept in an HttpOnly, SameSite=Strict cookie
that ends with the token, and a CSRF token derived from it for every form."""

import hashlib
import hmac
import secrets
import time

import jwt
from fastapi import Request
from fastapi.responses import Response

from shared.auth import InvalidToken, TokenVerifier, User

COOKIE = "mail_session"
SIGNIN_COOKIE = "mail_signin"  # the sign-in form's own CSRF token (no session yet)


class SignedOut(Exception):
    """No valid session: the browser is sent to the sign-in page."""


class BadCsrf(Exception):
    """A form posted without its CSRF token (or with another session's)."""


class Sessions:
    def __init__(self, verifier: TokenVerifier, key: bytes) -> None:
        self._verifier = verifier
        self._key = key  # HMAC key of the CSRF tokens; never leaves the service

    def user(self, request: Request) -> User:
        token = request.cookies.get(COOKIE)
        if not token:
            raise SignedOut
        try:
            return self._verifier.verify(token)
        except InvalidToken:
            raise SignedOut from None

    def csrf(self, request: Request) -> str:
        token = request.cookies.get(COOKIE, "")
        return hmac.new(self._key, b"csrf:" + token.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, request: Request, given: str | None) -> None:
        if not given or not hmac.compare_digest(given, self.csrf(request)):
            raise BadCsrf

    def sign_in(self, request: Request, response: Response, token: str) -> User:
        user = self._verifier.verify(token)  # raises InvalidToken
        expires = jwt.decode(token, options={"verify_signature": False})["exp"]
        max_age = max(0, int(expires - time.time()))  # the cookie ends with the token
        response.set_cookie(COOKIE, token, max_age=max_age, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/ui")
        response.delete_cookie(SIGNIN_COOKIE, path="/ui")
        return user

    @staticmethod
    def sign_out(response: Response) -> None:
        response.delete_cookie(COOKIE, path="/ui")

    @staticmethod
    def signin_token(request: Request) -> str:
        """The sign-in form's CSRF token: the browser's, or a new one."""
        return request.cookies.get(SIGNIN_COOKIE) or secrets.token_hex(16)

    @staticmethod
    def keep_signin_token(request: Request, response: Response, value: str) -> None:
        response.set_cookie(SIGNIN_COOKIE, value, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/ui")

    @staticmethod
    def check_signin_csrf(request: Request, given: str | None) -> None:
        expected = request.cookies.get(SIGNIN_COOKIE)
        if not given or not expected or not hmac.compare_digest(given, expected):
            raise BadCsrf
