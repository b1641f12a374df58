"""Commands the Redis ambassador answers itself: PING, ECHO, QUIT, SELECT, AUTH, HELLO, COMMAND, CLIENT."""

from __future__ import annotations

from typing import TYPE_CHECKING

from distpat.core.redis_commands import COMMANDS, wrong_arity
from distpat.core.resp import OK, array, bulk, error, integer
from distpat.net.redis_settings import VERSION

if TYPE_CHECKING:
    from distpat.net.redis_client import RedisClient
    from distpat.net.redis_pool import ShardPool

__all__ = ["answer_local"]


def answer_local(pool: ShardPool, client: RedisClient, name: bytes, args: list[bytes]) -> None:
    """Answer a command the proxy serves itself (PING, ECHO, QUIT, SELECT, AUTH, HELLO, COMMAND, CLIENT)."""
    n = len(args)
    if name == b"ping":
        client.answer(b"+PONG\r\n" if n == 1 else bulk(args[1]) if n == 2 else wrong_arity(args[0]))
    elif name == b"echo":
        client.answer(bulk(args[1]) if n == 2 else wrong_arity(args[0]))
    elif name == b"quit":
        client.answer(OK)
        client.close_after = True
    elif name == b"select":
        if n != 2:
            client.answer(wrong_arity(args[0]))
        elif args[1] == str(pool.pool.redis_db).encode() or (args[1] == b"0" and not pool.pool.redis_db):
            client.answer(OK)
        else:
            client.answer(error(f"ERR SELECT is not allowed: this pool serves database {pool.pool.redis_db}"))
    elif name == b"auth":
        client.answer(_auth(pool, client, args[1:]))
    elif name == b"hello":
        client.answer(_hello(pool, client, args))
    elif name == b"command":
        sub = args[1].lower() if n > 1 else b""
        if sub == b"count":
            client.answer(integer(len(COMMANDS)))
        elif sub in (b"", b"docs", b"info", b"list"):
            client.answer(b"*0\r\n")
        else:
            client.answer(error(f"ERR unknown subcommand '{args[1].decode('utf-8', 'replace')}'"))
    elif name == b"client":
        client.answer(_client_command(client, args))


def _auth(pool: ShardPool, client: RedisClient, creds: list[bytes]) -> bytes:
    password = pool.pool.redis_auth
    if not creds or len(creds) > 2:
        return wrong_arity(b"auth")
    if not password:
        return error("ERR AUTH <password> called without any password configured for the default user")
    if creds[-1] != password.encode() or (len(creds) == 2 and creds[0] != b"default"):
        client.authed = False
        return error("WRONGPASS invalid username-password pair or user is disabled.")
    client.authed = True
    return OK


def _hello(pool: ShardPool, client: RedisClient, args: list[bytes]) -> bytes:
    proto = client.proto
    i = 1
    if len(args) > 1:
        if args[1] not in (b"2", b"3"):
            return error("NOPROTO unsupported protocol version")
        proto = int(args[1])
        i = 2
    while i < len(args):
        option = args[i].lower()
        if option == b"auth" and i + 2 < len(args):
            reply = _auth(pool, client, [args[i + 1], args[i + 2]])
            if reply != OK:
                return reply
            i += 3
        elif option == b"setname" and i + 1 < len(args):
            client.name = args[i + 1]
            i += 2
        else:
            return error(f"ERR Syntax error in HELLO option '{args[i].decode('utf-8', 'replace')}'")
    if not client.authed:
        return error("NOAUTH HELLO must be called with the client already authenticated")
    if proto != client.proto and any(slot[0] is None for slot in client.waiting):
        # Commands before it went out on the other protocol's server connections; those after it
        # would go on new ones, and a server could run them first.
        return error("ERR HELLO cannot change the protocol while earlier commands still wait for replies")
    if proto != client.proto and client.tx_conn is not None:
        # WATCH's connection was set up for the protocol in use: EXEC's reply would come in it.
        return error("ERR HELLO cannot change the protocol while a WATCH is in place (UNWATCH first)")
    client.proto = proto
    fields = [
        (b"server", bulk(b"redis")),
        (b"version", bulk(VERSION.encode())),
        (b"proto", integer(proto)),
        (b"id", integer(client.id)),
        (b"mode", bulk(b"standalone")),
        (b"role", bulk(b"master")),
        (b"modules", b"*0\r\n"),
    ]
    if proto == 3:
        return b"%%%d\r\n" % len(fields) + b"".join(bulk(k) + v for k, v in fields)
    return array([part for k, v in fields for part in (bulk(k), v)])


def _client_command(client: RedisClient, args: list[bytes]) -> bytes:
    sub = args[1].lower() if len(args) > 1 else b""
    if sub == b"setinfo" and len(args) == 4:
        return OK
    if sub == b"setname" and len(args) == 3:
        client.name = args[2]
        return OK
    if sub == b"getname" and len(args) == 2:
        return b"_\r\n" if client.name is None and client.proto == 3 else bulk(client.name)
    if sub == b"id" and len(args) == 2:
        return integer(client.id)
    return error(
        f"ERR CLIENT {sub.decode('utf-8', 'replace').upper()} is not supported by a sharding proxy "
        "(SETINFO, SETNAME, GETNAME and ID are)"
    )
