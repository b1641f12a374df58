"""distpat.core.split_stage: the experiment router as a pure stage, fed requests and ticks (no sockets).

Each key kind, the missing key, the override and variant fields, the visitor cookie issued from a given
tick, the mirror choice, the notes the metrics count, the memo; the assignment is checked against
:class:`SplitTable` itself (which test_split_core.py and test_split_nginx.py check against nginx).
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distpat.core.keys import KeySource
from distpat.core.pipeline import Pipeline
from distpat.core.split import SplitTable, mirrored, murmur2
from distpat.core.split_stage import DEFAULT_COOKIE_MAX_AGE, SplitCookie, SplitStage
from distpat.core.stage import Forward, Request, Response, Tick
from distpat.errors import ConfigError

TICK = Tick(mono=1.0, wall=1_700_000_000.0, rand=0x0123456789ABCDEF)
LINES = [("new", "10"), ("old", "*")]
POOLS = {"new": "pool-new", "old": "pool-old"}
TABLE = SplitTable.from_variants(LINES)


def stage(key: str = "header:X-User", lines: list[tuple[str, str]] = LINES, **kw: object) -> SplitStage:
    pools = {name: f"pool-{name}" for name, _ in lines}
    return SplitStage(lines, pools, KeySource.parse(key), name="exp", **kw)  # type: ignore[arg-type]


def request(
    target: bytes = b"/",
    *,
    client: str = "192.0.2.7",
    scheme: str = "http",
    **fields: bytes,
) -> Request:
    return Request(
        b"GET",
        target,
        client=client,
        scheme=scheme,
        fields={name.replace("_", "-").encode(): value for name, value in fields.items()},
    )


def key_for(variant: str, table: SplitTable = TABLE, prefix: bytes = b"user-") -> bytes:
    """A key the table sends to ``variant`` (the first of user-0, user-1, ...)."""
    return next(k for i in range(10_000) if table.variant(k := prefix + b"%d" % i) == variant)


# --- the assignment, for each key kind ---------------------------------------------------------------


@pytest.mark.parametrize("variant", ["new", "old"])
def test_a_header_key_goes_to_its_variants_pool_and_is_noted(variant: str) -> None:
    s = stage()
    user = key_for(variant)
    r = request(x_user=user)
    effect = s.on_request(r, TICK)
    assert effect == Forward(pool=f"pool-{variant}")
    assert r.notes == {"exp": variant}
    assert s.decision(r) == variant
    assert s.reads == frozenset({b"x-user"})
    assert s.pools == ("pool-new", "pool-old")


def test_query_ip_and_cookie_keys_read_what_nginx_reads() -> None:
    user = key_for("new")
    assert stage("query:uid").on_request(request(b"/p?a=1&UID=" + user), TICK).pool == "pool-new"
    assert stage("query:uid").on_request(request(b"/p?uid=" + key_for("old")), TICK).pool == "pool-old"
    ip = next(
        f"10.0.{i // 256}.{i % 256}"
        for i in range(5000)
        if TABLE.variant(b"10.0.%d.%d" % divmod(i, 256)) == "new"
    )
    assert stage("ip").on_request(request(client=ip), TICK).pool == "pool-new"
    assert stage("ip").reads == frozenset()
    s = stage("cookie:sid")
    r = request(cookie=b"theme=dark; SID=" + user)  # cookie names match without regard to case, as nginx's
    assert s.on_request(r, TICK) == Forward(pool="pool-new")
    assert s.reads == frozenset({b"cookie"})


@given(st.binary(min_size=1, max_size=80))
def test_every_key_lands_where_the_split_table_puts_it(key: bytes) -> None:
    s = _SHARED
    r = Request(b"GET", b"/", client="c", fields={b"x-user": key})
    assert s.on_request(r, TICK).pool == f"pool-{TABLE.variant(key)}"
    assert s.on_request(r, TICK).pool == f"pool-{TABLE.variant(key)}"  # from the memo now


_SHARED = stage(max_memo=8)


@given(st.lists(st.binary(min_size=1, max_size=12), min_size=1, max_size=40), st.integers(1, 9899))
def test_raising_the_first_share_never_moves_its_users_out(keys: list[bytes], share: int) -> None:
    def pct(h: int) -> str:
        return f"{h // 100}.{h % 100:02d}"

    small = stage(lines=[("b", pct(share)), ("a", "*")])
    large = stage(lines=[("b", pct(share + 100)), ("a", "*")])
    for key in keys:
        if small.on_request(request(x_user=key), TICK).pool == "pool-b":
            assert large.on_request(request(x_user=key), TICK).pool == "pool-b"


def test_the_same_key_is_sticky_across_stage_instances() -> None:
    """Nothing but the key and the lines decides: a restarted process, or another worker, agrees."""
    keys = [b"u%d" % i for i in range(300)]
    first = [stage().on_request(request(x_user=k), TICK).pool for k in keys]
    again = stage(max_memo=1)
    assert [again.on_request(request(x_user=k), Tick(9.0, 9.0, i)).pool for i, k in enumerate(keys)] == first
    shares = Counter(first)
    assert 10 <= shares["pool-new"] <= 60
    assert shares["pool-new"] + shares["pool-old"] == 300


def test_a_missing_or_empty_key_is_hashed_as_nginx_hashes_an_empty_value() -> None:
    assert murmur2(b"") == 0  # below every boundary: the first line
    s = stage()
    for r in (request(), request(x_user=b"")):
        assert s.on_request(r, TICK).pool == "pool-new"
        assert r.notes == {"exp": "new"}
    keyless = stage(keyless="old")
    assert keyless.on_request(request(), TICK).pool == "pool-old"
    assert keyless.on_request(request(x_user=key_for("new")), TICK).pool == "pool-new"
    assert stage("query:uid").on_request(request(b"/x?other=1"), TICK).pool == "pool-new"


# --- override and variant fields -------------------------------------------------------------------


def test_the_override_header_names_a_variant_and_unknown_names_are_ignored() -> None:
    s = stage(override_header="X-Variant-Override")
    assert s.reads == frozenset({b"x-user", b"x-variant-override"})
    old_user = key_for("old")
    r = request(x_user=old_user, x_variant_override=b"new")
    assert s.on_request(r, TICK).pool == "pool-new"
    assert s.decision(r) == "new"
    for value in (b"nope", b"NEW", b""):
        r = request(x_user=old_user, x_variant_override=value)
        assert s.on_request(r, TICK).pool == "pool-old"
        assert s.decision(r) == "old"
    # the override does not change the memo: the key's own variant next time
    assert s.on_request(request(x_user=old_user), TICK).pool == "pool-old"


def test_the_variant_header_goes_upstream_and_back_and_a_clients_own_is_dropped() -> None:
    s = stage(variant_header="X-Variant")
    effect = s.on_request(request(x_user=key_for("old"), x_variant=b"new"), TICK)
    assert effect == Forward(
        pool="pool-old",
        add=((b"X-Variant", b"old"),),
        respond=((b"X-Variant", b"old"),),
    )
    assert s.drops == frozenset({b"x-variant"})  # dropped by the engine in its one pass
    assert s.reads == frozenset({b"x-user"})  # the field is dropped, not read


def test_through_a_pipeline_the_variant_field_reaches_the_response() -> None:
    s = stage(variant_header="X-Variant")
    pipeline = Pipeline([s])
    assert pipeline.reads == frozenset({b"x-user"})
    run = pipeline.run(request(x_user=key_for("new")))
    effect = run.start(TICK)
    assert isinstance(effect, Forward)
    assert effect.pool == "pool-new"
    amend, replaced = run.respond(Response(200, ()), TICK)
    assert replaced is None
    assert amend is not None
    assert amend.add == ((b"X-Variant", b"new"),)


# --- the visitor cookie ----------------------------------------------------------------------------


def test_a_visitor_without_the_cookie_gets_one_and_is_assigned_by_it_now_and_later() -> None:
    s = stage("cookie:sid", variant_header="X-Variant")
    r = request(cookie=b"theme=dark")
    effect = s.on_request(r, TICK)
    ident = b"0123456789abcdef"
    variant = TABLE.variant(ident)
    assert effect.pool == f"pool-{variant}"
    assert r.notes == {"exp": variant}
    assert effect.respond == (
        (b"X-Variant", variant.encode()),
        (
            b"Set-Cookie",
            b"sid=%s; Path=/; Max-Age=%d; HttpOnly; SameSite=Lax" % (ident, DEFAULT_COOKIE_MAX_AGE),
        ),
    )
    # the upstream sees the Cookie field the browser sends from now on
    assert effect.add == ((b"X-Variant", variant.encode()), (b"Cookie", b"theme=dark; sid=" + ident))
    assert effect.drop == frozenset({b"cookie"})
    # the next request sends it back: the same variant, nothing issued
    later = s.on_request(request(cookie=b"sid=" + ident + b"; theme=dark"), Tick(2.0, 2.0, 99))
    assert later.pool == effect.pool
    assert not any(n == b"Set-Cookie" for n, _ in later.respond)
    assert later.add == ((b"X-Variant", variant.encode()),)


def test_issued_ids_come_from_the_tick_and_spread_over_the_variants() -> None:
    s = stage("cookie:sid")
    seen = Counter()
    for i in range(400):
        rand = (i * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)
        effect = s.on_request(request(), Tick(0.0, 0.0, rand))
        (set_cookie,) = [v for n, v in effect.respond if n == b"Set-Cookie"]
        ident = set_cookie.split(b";")[0].removeprefix(b"sid=")
        assert ident == b"%016x" % rand
        assert effect.add == ((b"Cookie", b"sid=" + ident),)  # no Cookie field before: just this one
        assert effect.pool == f"pool-{TABLE.variant(ident)}"
        seen[effect.pool] += 1
    assert 10 <= seen["pool-new"] <= 80


def test_the_cookie_is_secure_on_https_and_an_empty_one_is_replaced() -> None:
    s = stage("cookie:sid", cookie=SplitCookie(max_age=3600))
    effect = s.on_request(request(scheme="https", cookie=b"sid=; a=1"), TICK)
    assert (b"Set-Cookie", b"sid=0123456789abcdef; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax; Secure") in (
        effect.respond
    )
    assert (b"Cookie", b"a=1; sid=0123456789abcdef") in effect.add


def test_issuing_can_be_turned_off_and_other_keys_never_issue() -> None:
    off = stage("cookie:sid", cookie=None)
    assert off.on_request(request(), TICK) == Forward(pool="pool-new")  # keyless: as nginx, the first
    assert stage("header:X-User").cookie is None
    assert stage("cookie:sid+ip").cookie is None  # a combination is not one cookie


def test_the_override_applies_to_a_new_visitor_too() -> None:
    s = stage("cookie:sid", override_header="X-Force")
    ident = b"0123456789abcdef"
    other = "old" if TABLE.variant(ident) == "new" else "new"
    r = request(x_force=other.encode())
    effect = s.on_request(r, TICK)
    assert effect.pool == f"pool-{other}"
    assert r.notes == {"exp": other}
    assert any(n == b"Set-Cookie" for n, _ in effect.respond)


# --- the mirror ----------------------------------------------------------------------------------


def test_mirrored_keys_are_chosen_by_the_key_consistently() -> None:
    s = stage(mirror_pool="shadow", mirror_percent="25")
    assert s.pools == ("pool-new", "pool-old", "shadow")
    keys = [b"user-%d" % i for i in range(1000)]
    chosen = 0
    by_variant: Counter[str] = Counter()
    for key in keys:
        effect = s.on_request(request(x_user=key), TICK)
        expected = mirrored(key, 2500)
        assert effect.mirror == (("shadow",) if expected else ())
        assert s.on_request(request(x_user=key), Tick(5.0, 5.0, 7)).mirror == effect.mirror
        chosen += expected
        by_variant[TABLE.variant(key)] += expected
    assert 180 <= chosen <= 320
    assert by_variant["new"] > 0  # spread over the variants, not only the top hashes


def test_the_override_keeps_the_keys_mirror_choice_and_keyless_requests_are_drawn() -> None:
    s = stage(mirror_pool="shadow", mirror_percent="100", override_header="X-Force")
    assert s.on_request(request(x_user=key_for("old"), x_force=b"new"), TICK) == Forward(
        pool="pool-new", mirror=("shadow",)
    )
    half = stage(mirror_pool="shadow", mirror_percent="50")
    draws = [half.on_request(request(), Tick(0.0, 0.0, r * 0x2545F4914F6CDD1D)).mirror for r in range(200)]
    assert 50 <= sum(bool(m) for m in draws) <= 150
    assert stage(mirror_pool="shadow", mirror_percent="0.01").mirror_share == 1


# --- the memo, and the configuration refused -----------------------------------------------------------


def test_the_memo_is_bounded_and_long_keys_are_never_stored() -> None:
    s = stage(max_memo=3, max_key_bytes=10)
    for i in range(7):
        s.on_request(request(x_user=b"k%d" % i), TICK)
        assert 1 <= s.cached <= 3
    before = s.cached
    s.on_request(request(x_user=b"x" * 11), TICK)
    assert s.cached == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pools": {"new": "p"}}, "variant 'old' has no pool"),
        ({"pools": {"new": "p", "old": "q", "beta": "r"}}, "'beta', which is not a variant"),
        ({"lines": [("n w", "10"), ("old", "*")]}, "variant name 'n w' must be letters"),
        ({"lines": [("new", "60"), ("old", "50")]}, "over 100%"),
        ({"lines": [("new", "10")]}, "under 100%"),
        ({"key": "uri"}, "uri is not a split key"),
        ({"key": "path"}, "path is not a split key"),
        ({"mirror_pool": "shadow"}, "a mirror needs both a pool and a percentage"),
        ({"mirror_percent": "5"}, "a mirror percentage needs a mirror pool"),
        ({"mirror_pool": "shadow", "mirror_percent": "5.555"}, "more than two decimals"),
        ({"mirror_pool": "shadow", "mirror_percent": "0"}, "is zero"),
        ({"keyless": "beta"}, "keyless variant 'beta' is not one of new, old"),
        ({"override_header": "X Bad"}, "override header 'X Bad' is not a field name"),
        ({"variant_header": ""}, "variant header '' is not a field name"),
        ({"max_memo": 0}, "max_memo"),
    ],
)
def test_bad_configurations_are_refused_naming_what_is_wrong(kwargs: dict[str, object], message: str) -> None:
    lines = kwargs.pop("lines", LINES)
    pools = kwargs.pop("pools", {name: f"pool-{name}" for name, _ in lines})  # type: ignore[attr-defined]
    key = KeySource.parse(str(kwargs.pop("key", "header:X-User")))
    with pytest.raises(ConfigError, match="split") as info:
        SplitStage(lines, pools, key, **kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_a_variant_on_several_lines_shares_its_pool_and_the_repr_shows_the_lines() -> None:
    s = SplitStage(
        [("a", "10"), ("b", "10"), ("a", "*")], {"a": "pa", "b": "pb"}, KeySource.parse("ip"), name="x"
    )
    assert s.pools == ("pa", "pb")
    assert s.variants() == (("a", "10"), ("b", "10"), ("a", "80"))
    assert repr(s) == "<SplitStage 'x' key=ip [a:10, b:10, a:80]>"
    assert SplitStage.kind == "split"
    with pytest.raises(ConfigError, match="Max-Age"):
        SplitCookie(max_age=0)
