"""``GET /admin/accounts`` and ``POST /admin/accounts/reload``: the account pool for operators.

Both need ``Authorization: Bearer <ADMIN_KEY>`` (compared in constant time); with ADMIN_KEY
empty they do not exist (404), so a gateway never exposes its accounts by accident. Nothing
here shows a usable token: the pool's snapshot masks them (``pgw.pool.account_row``).
"""

import hmac

from pgw.errors import ApiError
from pgw.handlers.base import ApiHandler
from pgw.pool import AccountsError


class AdminHandler(ApiHandler):
    def prepare(self):
        admin_key = self.gateway.settings.admin_key
        if not admin_key:
            raise ApiError(404, "no such endpoint: %s %s (set ADMIN_KEY to enable the admin endpoints)"
                           % (self.request.method, self.request.path), "invalid_request_error", "not_found")
        auth = self.request.headers.get("Authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "send the admin key as 'Authorization: Bearer <ADMIN_KEY>'",
                           "invalid_request_error", "invalid_api_key")
        if not hmac.compare_digest(key.strip().encode(), admin_key.encode()):
            raise ApiError(403, "this key is not the admin key", "permission_error", "forbidden")


class AccountsHandler(AdminHandler):
    async def get(self):
        self.write_json(await self.gateway.pool.snapshot())


class ReloadHandler(AdminHandler):
    async def post(self):
        try:
            accounts, keys = await self.gateway.reload_accounts()
        except AccountsError as e:
            raise ApiError(400, "the accounts were not reloaded: %s" % e, "invalid_request_error",
                           "bad_accounts_file") from None
        self.write_json({"reloaded": True, "accounts": accounts, "access_keys": keys})
