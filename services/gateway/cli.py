"""`python -m services.gateway.cli`: manage app API keys and mint superuser JWTs.

    python -m services.gateway.cli keys create --name billing --scopes chat,embeddings --rpm 60
    python -m services.gateway.cli keys list
    python -m services.gateway.cli keys revoke <id>
    python -m services.gateway.cli token [--subject alice] [--ttl 3600] [--private-key key.pem]

It reads the gateway's settings (DATABASE_URL, LLMMESH_API_KEY_SECRET, LLMMESH_JWT_SECRET);
under `make run` the secrets live in the data directory, where it finds them too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from services.common.postgres import open_pool
from services.gateway.api_keys import ApiKeyStore, NewKey
from services.gateway.auth import mint_jwt
from services.gateway.config import GatewaySettings, local_settings
from services.gateway.routers.keys import QuotasIn


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.gateway.cli", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    keys = commands.add_parser("keys", help="app API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create a key; it is printed once")
    create.add_argument("--name", required=True)
    create.add_argument("--scopes", required=True, help="comma-separated: chat, embeddings, jobs, admin")
    create.add_argument("--models", help="comma-separated allow-list; unset: every model")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens per minute")
    create.add_argument("--streams", type=int, help="concurrent streams")
    create.add_argument("--quotas", default="{}", help='JSON, e.g. \'{"max_priority": 50, "max_training_epochs": 5}\'')
    keys.add_parser("list", help="list keys (never the keys themselves)")
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    token = commands.add_parser("token", help="mint a superuser JWT")
    token.add_argument("--subject", default="admin")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.add_argument("--private-key", type=Path, help="PEM private key, for RS256")
    return parser


async def _keys(settings: GatewaySettings, args: argparse.Namespace) -> object:
    if not (settings.database_url and settings.api_key_secret):
        raise SystemExit("Set DATABASE_URL and LLMMESH_API_KEY_SECRET (make run keeps them in its data directory).")
    pool = await open_pool(settings.database_url)
    try:
        store = ApiKeyStore(pool, settings.api_key_secret.get_secret_value().encode())
        await store.migrate()
        if args.action == "create":
            new = NewKey(
                name=args.name,
                scopes=tuple(s.strip() for s in args.scopes.split(",") if s.strip()),
                models=tuple(m.strip() for m in args.models.split(",")) if args.models else None,
                rpm_limit=args.rpm,
                tpm_limit=args.tpm,
                stream_limit=args.streams,
                quotas=QuotasIn.model_validate_json(args.quotas).to_domain(),
            )
            key, secret = await store.create(new)
            return {**key.body(), "key": secret}
        if args.action == "list":
            return [key.body() for key in await store.list()]
        return (await store.revoke(args.key_id)).body()
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    settings = local_settings(GatewaySettings())
    if args.command == "token":
        private_key = args.private_key.read_text() if args.private_key else None
        print(mint_jwt(settings, args.subject, args.ttl, private_key))
        return
    print(json.dumps(asyncio.run(_keys(settings, args)), indent=2))


if __name__ == "__main__":
    main()
