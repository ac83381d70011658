"""The dispatcher's API for the delivery screens, asked as the signed-in user (their token, so
its rules hold)."""

from typing import Any

import httpx
from fastapi import Request

from services.config_svc.ui.session import COOKIE


class Dispatcher:
    def __init__(self, url: str) -> None:
        # One client for every page: a new one costs tens of ms (its TLS context).
        self._client = httpx.AsyncClient(base_url=url, timeout=10)

    def as_user(self, request: Request) -> "AsUser":
        token = request.cookies.get(COOKIE, "")
        return AsUser(self._client, {"Authorization": f"Bearer {token}"})

    async def recent(self, request: Request, params: dict[str, Any]) -> list[dict] | None:
        """None when the dispatcher cannot be asked (the page still shows)."""
        try:
            answer = await self.as_user(request).get("/v1/deliveries", params=params)
        except httpx.HTTPError:
            return None
        return answer.json()["items"] if answer.is_success else None

    async def close(self) -> None:
        await self._client.aclose()


class AsUser:
    """The shared client, each call with the user's token."""

    def __init__(self, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
        self._client = client
        self._headers = headers

    async def get(self, url: str, **options: Any) -> httpx.Response:
        return await self._client.get(url, headers=self._headers, **options)

    async def post(self, url: str, **options: Any) -> httpx.Response:
        return await self._client.post(url, headers=self._headers, **options)
