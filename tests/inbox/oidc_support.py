"""A real OpenID provider for the tests: `oidc-provider` from npm, on a loopback port.

tests/npm_installs.py installs the pinned package (the ``oidc_provider_package``
fixture waits for it); :class:`OpenIdProvider` starts it with node and
a configuration this module writes: static clients, test accounts with a
``groups`` claim, and the package's own login and consent pages (its
"dev interactions": a real HTML login form, any password). Nothing here
imitates the provider; the provider is the certified implementation.

:func:`sign_in` walks that login as a browser would, over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from playwright.sync_api import Route

#: the provider's program: a key made per run, the clients and accounts of a JSON file
PROVIDER_JS = r"""
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import Provider from 'oidc-provider';

const setup = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
// a key of the test's own when given (two providers sharing one), else this run's
const jwk = setup.signing_key || {
  ...privateKey.export({ format: 'jwk' }), kid: 'aegis-test', use: 'sig', alg: 'RS256',
};

const server = createServer();
server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: setup.clients,
    jwks: { keys: [jwk] },
    claims: { openid: ['sub'], profile: ['name'], email: ['email'], groups: ['groups'] },
    // the claims of the scopes asked for go into the ID token itself
    conformIdTokenClaims: false,
    features: { devInteractions: { enabled: true } },
    pkce: { required: () => true },
    ttl: { IdToken: setup.id_token_ttl || 3600 },
    async findAccount(ctx, id) {
      // read again at each sign-in: a test changes a person's groups while it runs
      const account = JSON.parse(readFileSync(process.argv[2], 'utf8')).accounts[id];
      if (!account) return undefined;
      return { accountId: id, async claims() { return { sub: id, ...account }; } };
    },
  });
  server.on('request', provider.callback());
  console.log(JSON.stringify({ issuer }));
});
"""


def prepare_oidc_provider(installed: Path) -> Path:
    """``installed`` (oidc-provider's npm folder) with the provider's program beside it; returned.

    Written whole under a name of its own, then renamed: xdist workers share the folder.
    """
    program = installed / f"provider.mjs.{os.getpid()}"
    program.write_text(PROVIDER_JS)
    program.replace(installed / "provider.mjs")
    return installed


class OpenIdProvider:
    """oidc-provider on a free loopback port, as a context manager; ``issuer`` once started."""

    def __init__(
        self,
        installed: Path,
        clients: Sequence[Mapping[str, Any]],
        accounts: Mapping[str, Mapping[str, Any]],
        *,
        workdir: Path,
        id_token_ttl: int = 3600,
        signing_key: Mapping[str, Any] | None = None,
        name: str = "provider",
    ) -> None:
        self.installed = installed
        self.setup = workdir / f"{name}-setup.json"
        setup: dict[str, Any] = {
            "clients": list(clients),
            "accounts": dict(accounts),
            "id_token_ttl": id_token_ttl,
        }
        if signing_key is not None:
            setup["signing_key"] = dict(signing_key)  # a private JWK: both providers sign with it
        self.setup.write_text(json.dumps(setup))
        self.log = workdir / f"{name}.log"
        self.process: subprocess.Popen[str] | None = None
        self.issuer = ""

    def set_account(self, login: str, claims: Mapping[str, Any]) -> None:
        """Change (or add) a person at the provider, as an administrator would: the next
        ID token it issues for them carries ``claims``."""
        setup = json.loads(self.setup.read_text())
        setup["accounts"][login] = dict(claims)
        staged = self.setup.with_suffix(".tmp")
        staged.write_text(json.dumps(setup))
        staged.replace(self.setup)  # the provider never reads half a file

    def __enter__(self) -> OpenIdProvider:
        with open(self.log, "w") as errors:
            self.process = subprocess.Popen(
                ["node", str(self.installed / "provider.mjs"), str(self.setup)],
                cwd=self.installed,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                env={**os.environ, "NODE_ENV": "development"},
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # the provider prints its issuer once listening
        if not line:
            self.process.wait(10)
            raise RuntimeError(f"oidc-provider did not start:\n{self.log.read_text()[-2000:]}")
        self.issuer = json.loads(line)["issuer"]
        deadline = time.monotonic() + 30
        while True:
            try:
                found = httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=2)
                if found.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("oidc-provider did not answer its discovery document")
            time.sleep(0.1)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _form_action(html: str, base: str) -> str:
    match = re.search(r'<form[^>]*action="([^"]+)"', html)
    assert match, f"no form on the provider's page:\n{html[:800]}"
    return urllib.parse.urljoin(base, match.group(1).replace("&amp;", "&"))


def follow_to(client: httpx.Client, url: str, stop_at: str) -> httpx.Response:
    """GET ``url`` and follow redirects until one points at ``stop_at`` (not followed)."""
    response = client.get(url)
    while response.is_redirect:
        target = urllib.parse.urljoin(str(response.url), response.headers["location"])
        if target.startswith(stop_at):
            return response
        response = client.get(target)
    return response


def provider_login(client: httpx.Client, start: httpx.Response, login: str, stop_at: str) -> str:
    """Log in at the provider's own login page and consent; the URL it sends back to ``stop_at``.

    ``start`` is the provider's login page (the end of the redirects from
    the authorization request).
    """
    page = start
    for _ in range(6):
        if page.is_redirect:
            target = urllib.parse.urljoin(str(page.url), page.headers["location"])
            if target.startswith(stop_at):
                return target
            page = client.get(target)
            continue
        html = page.text
        action = _form_action(html, str(page.url))
        if 'name="login"' in html:
            page = client.post(
                action, data={"prompt": "login", "login": login, "password": "any password"}
            )
        elif 'value="consent"' in html:
            page = client.post(action, data={"prompt": "consent"})
        else:
            raise AssertionError(f"an unexpected provider page:\n{html[:800]}")
    raise AssertionError("the provider never sent the browser back")


def sign_in(inbox: str, login: str, client: httpx.Client) -> httpx.Client:
    """Sign in to the inbox at ``inbox`` through the provider as ``login``; return ``client``.

    The client keeps cookies like a browser; its last page is the inbox's.
    """
    start = follow_to(client, f"{inbox}/signin/oidc", stop_at=f"{inbox}/signin/oidc/callback")
    callback = provider_login(client, start, login, stop_at=f"{inbox}/signin/oidc/callback")
    done = client.get(callback)
    assert done.status_code == 200, done.text[:800]
    assert "Signed in" in done.text, done.text[:800]
    return client


def loopback_only(route: Route) -> None:
    """A Playwright route handler: requests to loopback go on, any other host is refused."""
    host = urllib.parse.urlsplit(route.request.url).hostname
    if host in {"127.0.0.1", "localhost"}:
        route.continue_()
    else:
        route.abort()
