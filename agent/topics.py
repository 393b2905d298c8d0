"""Topic names of the contract (``P/S/...``): one place builds them all."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    prefix: str
    store_id: str

    def _t(self, *parts: str) -> str:
        return "/".join((self.prefix, self.store_id) + parts)

    @property
    def orders(self) -> str:
        return self._t("orders")

    @property
    def result(self) -> str:
        return self._t("orders", "result")

    @property
    def status(self) -> str:
        return self._t("status")

    @property
    def health(self) -> str:
        return self._t("health")

    @property
    def alerts(self) -> str:
        return self._t("alerts")

    @property
    def stats(self) -> str:
        return self._t("stats")

    @property
    def config_set(self) -> str:
        return self._t("config", "set")

    @property
    def config_state(self) -> str:
        return self._t("config", "state")

    @property
    def requests(self) -> str:
        return self._t("request", "+")

    def request(self, command: str) -> str:
        return self._t("request", command)

    def response(self, command: str) -> str:
        return self._t("response", command)
