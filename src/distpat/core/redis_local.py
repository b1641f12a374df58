"""Commands the Redis ambassador answers itself: PING, ECHO, QUIT, SELECT, AUTH, HELLO, COMMAND, CLIENT.

Pure: the client's session (authenticated or not, protocol, name, id) is passed in and updated in
place, as the ring's bounded loads take their loads; the reply comes back as bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from distpat.core.redis_commands import COMMANDS, wrong_arity
from distpat.core.resp import OK, array, bulk, error, integer

__all__ = ["VERSION", "LocalReply", "Session", "answer_local"]

VERSION = "7.2.0"  # what HELLO says the server is: the protocol distpat speaks


class Session(Protocol):
    """What a local command reads and changes of its client."""

    authed: bool
    proto: int
    name: bytes | None
    id: int


@dataclass(frozen=True, slots=True)
class LocalReply:
    reply: bytes
    close: bool = False
    """QUIT: the connection closes once the reply is written."""


@dataclass(frozen=True, slots=True)
class _Server:
    password: str
    db: int
    waiting: bool
    watching: bool


def answer_local(
    name: bytes,
    args: list[bytes],
    session: Session,
    *,
    password: str = "",
    db: int = 0,
    waiting: bool = False,
    watching: bool = False,
) -> LocalReply:
    """The reply to a command the proxy serves itself. ``password`` and ``db`` are the pool's
    (twemproxy's ``redis_auth`` and ``redis_db``); ``waiting``: earlier commands of the client
    still wait for replies; ``watching``: it has a WATCH in place (HELLO may not switch protocols
    then)."""
    server = _Server(password, db, waiting, watching)
    n = len(args)
    if name == b"ping":
        return LocalReply(b"+PONG\r\n" if n == 1 else bulk(args[1]) if n == 2 else wrong_arity(args[0]))
    if name == b"echo":
        return LocalReply(bulk(args[1]) if n == 2 else wrong_arity(args[0]))
    if name == b"quit":
        return LocalReply(OK, close=True)
    if name == b"select":
        if n != 2:
            return LocalReply(wrong_arity(args[0]))
        if args[1] == str(db).encode() or (args[1] == b"0" and not db):
            return LocalReply(OK)
        return LocalReply(error(f"ERR SELECT is not allowed: this pool serves database {db}"))
    if name == b"auth":
        return LocalReply(_auth(server, session, args[1:]))
    if name == b"hello":
        return LocalReply(_hello(server, session, args))
    if name == b"command":
        sub = args[1].lower() if n > 1 else b""
        if sub == b"count":
            return LocalReply(integer(len(COMMANDS)))
        if sub in (b"", b"docs", b"info", b"list"):
            return LocalReply(b"*0\r\n")
        return LocalReply(error(f"ERR unknown subcommand '{args[1].decode('utf-8', 'replace')}'"))
    if name == b"client":
        return LocalReply(_client_command(session, args))
    return LocalReply(error(f"ERR '{name.decode('utf-8', 'replace')}' is not answered locally"))


def _auth(server: _Server, client: Session, creds: list[bytes]) -> bytes:
    password = server.password
    if not creds or len(creds) > 2:
        return wrong_arity(b"auth")
    if not password:
        return error("ERR AUTH <password> called without any password configured for the default user")
    if creds[-1] != password.encode() or (len(creds) == 2 and creds[0] != b"default"):
        client.authed = False
        return error("WRONGPASS invalid username-password pair or user is disabled.")
    client.authed = True
    return OK


def _hello(server: _Server, client: Session, args: list[bytes]) -> bytes:
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
            reply = _auth(server, client, [args[i + 1], args[i + 2]])
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
    if proto != client.proto and server.waiting:
        # Commands before it went out on the other protocol's server connections; those after it
        # would go on new ones, and a server could run them first.
        return error("ERR HELLO cannot change the protocol while earlier commands still wait for replies")
    if proto != client.proto and server.watching:
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


def _client_command(client: Session, args: list[bytes]) -> bytes:
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
