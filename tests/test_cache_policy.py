"""The shared cache's rules with no sockets and no clock (times are passed in), grouped by the
section of RFC 9111 each follows (RFC 9110 and RFC 5861 where said): storing (3, 3.1),
freshness (4.2.1), age (4.2.3), reuse (4.2.4, 5.2.1, RFC 5861), validation (4.3), invalidation
(4.4) and Vary (4.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distpat.core.cache_control import DELTA_MAX, format_http_date
from distpat.core.cache_policy import (
    CachePolicy,
    Fields,
    Stored,
    Use,
    current_age,
    make_stored,
    response_directives,
    stale_if_error_allows,
    storable,
    usable,
    vary_names,
    vary_values,
)
from distpat.core.cache_validation import (
    client_not_modified,
    freshen,
    invalidated_targets,
    selected_by_304,
    validators,
)
from distpat.core.stage import Request

NOW = 1_800_000_000.0
POLICY = CachePolicy()
HEURISTIC = CachePolicy(heuristic=True)
DATE = format_http_date(NOW)


def req(method: bytes = b"GET", target: bytes = b"/", **fields: bytes) -> Request:
    """A request with the given fields (keyword names with ``_`` for ``-``)."""
    return Request(
        method, target, "192.0.2.1", fields={k.replace("_", "-").encode(): v for k, v in fields.items()}
    )


def h(*pairs: tuple[bytes, bytes]) -> Fields:
    return tuple(pairs)


def why(
    headers: Fields, status: int = 200, request: Request | None = None, policy: CachePolicy = POLICY
) -> str | None:
    request = request if request is not None else req()
    return storable(request.method, request, status, headers, response_directives(headers, policy), policy)


def store(
    headers: Fields,
    status: int = 200,
    request: Request | None = None,
    request_time: float = NOW,
    response_time: float = NOW,
    policy: CachePolicy = POLICY,
) -> Stored:
    request = request if request is not None else req()
    return make_stored(
        request, status, headers, response_directives(headers, policy), request_time, response_time, policy
    )


def names(stored: Stored) -> set[bytes]:
    return {n.lower() for n, _ in stored.headers}


# -- RFC 9111 section 3: storing responses -------------------------------------------------------


class TestStoring:
    """Section 3: what a shared cache may store, and the reason it gives when it may not."""

    FRESH = h((b"Cache-Control", b"max-age=60"))

    def test_a_fresh_get_is_stored(self) -> None:
        """Section 3: a final response to GET with explicit freshness."""
        assert why(self.FRESH) is None

    @pytest.mark.parametrize("method", [b"HEAD", b"POST", b"PUT", b"get"])
    def test_method(self, method: bytes) -> None:
        """Section 3: this cache stores responses to GET only (methods are case-sensitive)."""
        assert why(self.FRESH, request=req(method)) == "method"

    @pytest.mark.parametrize("status", [100, 101, 199, 206, 304])
    def test_status(self, status: int) -> None:
        """Section 3: a final status, ranges (206) and 304 not stored."""
        assert why(self.FRESH, status=status) == "status"

    def test_an_unknown_status_without_explicit_freshness(self) -> None:
        """Section 3: a status not understood is stored only with explicit freshness."""
        assert why(h((b"ETag", b'"x"')), status=599) == "status"
        assert why(self.FRESH, status=599) is None

    def test_no_store(self) -> None:
        """Section 5.2.2.5: no-store in the response."""
        assert why(h((b"Cache-Control", b"max-age=60, no-store"))) == "no-store"

    def test_request_no_store(self) -> None:
        """Section 5.2.1.5: no-store in the request."""
        assert why(self.FRESH, request=req(cache_control=b"no-store")) == "request-no-store"

    def test_private(self) -> None:
        """Section 5.2.2.7: a shared cache does not store a private response."""
        assert why(h((b"Cache-Control", b"private, max-age=60"))) == "private"

    def test_qualified_private_is_stored(self) -> None:
        """Section 5.2.2.7: private="f" stores the response without f."""
        assert why(h((b"Cache-Control", b'private="x-user", max-age=60'))) is None

    def test_vary_star(self) -> None:
        """Section 4.1: Vary: * matches no later request."""
        assert why((*self.FRESH, (b"Vary", b"Accept, *"))) == "vary-star"

    @pytest.mark.parametrize(
        ("cache_control", "reason"),
        [
            (b"max-age=60", "authorization"),
            (b"max-age=60, public", None),
            (b"max-age=60, must-revalidate", None),
            (b"s-maxage=60", None),
        ],
    )
    def test_authorization(self, cache_control: bytes, reason: str | None) -> None:
        """Section 3.5: a request with Authorization only with public, must-revalidate or s-maxage."""
        request = req(authorization=b"Basic eDp5")
        assert why(h((b"Cache-Control", cache_control)), request=request) == reason

    def test_set_cookie(self) -> None:
        """Section 3 (a cache's own choice, 5.2.2.7's reasoning): a Set-Cookie is shared only when public."""
        cookie = (b"Set-Cookie", b"a=b")
        assert why((*self.FRESH, cookie)) == "set-cookie"
        assert why(h((b"Cache-Control", b"public, max-age=60"), cookie)) is None

    @pytest.mark.parametrize("status", [200, 302, 307])
    def test_no_freshness(self, status: int) -> None:
        """Section 3: nothing to make it fresh, nothing to validate it with."""
        assert why(h((b"Date", DATE)), status=status) == "no-freshness"

    def test_validators_or_the_heuristic_make_it_storable(self) -> None:
        """Sections 3 and 4.2.2: a validator to revalidate with, or heuristic freshness when configured."""
        assert why(h((b"ETag", b'"x"'))) is None
        assert why(h((b"Last-Modified", DATE))) is None
        assert why(h((b"Date", DATE)), policy=HEURISTIC) is None

    @pytest.mark.parametrize("explicit", [(b"Expires", DATE), (b"Cache-Control", b"public")])
    def test_explicit_freshness_other_than_max_age(self, explicit: tuple[bytes, bytes]) -> None:
        """Section 3: Expires or public are enough."""
        assert why(h(explicit)) is None

    @pytest.mark.parametrize(
        ("status", "reason"),
        [(200, None), (307, None), (599, "must-understand")],
    )
    def test_must_understand(self, status: int, reason: str | None) -> None:
        """Section 5.2.2.3: must-understand overrides no-store for a status the cache understands,
        and refuses any other."""
        assert why(h((b"Cache-Control", b"must-understand, no-store, max-age=60")), status=status) == reason

    def test_cdn_cache_control_wins(self) -> None:
        """RFC 9213 section 2.1: a valid CDN-Cache-Control is used instead of Cache-Control."""
        headers = h((b"Cache-Control", b"no-store"), (b"CDN-Cache-Control", b"max-age=60"))
        assert why(headers) is None
        assert why(headers, policy=CachePolicy(cdn=False)) == "no-store"


class TestFieldsNotStored:
    """Section 3.1: fields a cache keeps no copy of."""

    def test_hop_by_hop_age_and_content_length(self) -> None:
        """Section 3.1: hop-by-hop fields; Age and Content-Length are computed per answer."""
        hop = [b"Connection", b"Keep-Alive", b"Proxy-Connection", b"TE", b"Trailer"]
        hop += [b"Transfer-Encoding", b"Upgrade", b"Proxy-Authenticate", b"Age", b"Content-Length"]
        s = store(
            h((b"Cache-Control", b"max-age=60"), (b"Content-Type", b"text/plain"), *((n, b"1") for n in hop))
        )
        assert names(s) == {b"cache-control", b"content-type"}

    def test_connection_listed_fields(self) -> None:
        """Section 3.1 (RFC 9110 7.6.1): the fields a Connection names are hop-by-hop."""
        s = store(h((b"Connection", b"close, X-Hop"), (b"X-Hop", b"1"), (b"X-End", b"2"), (b"Expires", DATE)))
        assert names(s) == {b"x-end", b"expires"}

    def test_qualified_private_and_no_cache_fields(self) -> None:
        """Sections 5.2.2.4 and 5.2.2.7: the named fields are not shared."""
        cc = b'private="X-User", no-cache="Set-Cookie", max-age=60, public'
        s = store(h((b"Cache-Control", cc), (b"X-User", b"u"), (b"Set-Cookie", b"a=b"), (b"X-Keep", b"k")))
        assert names(s) == {b"cache-control", b"x-keep"}


# -- RFC 9111 section 4.2.1: freshness lifetime --------------------------------------------------


class TestFreshnessLifetime:
    """Section 4.2.1: s-maxage, then max-age, then Expires - Date; heuristics only when configured."""

    EXPIRES = (b"Expires", format_http_date(NOW + 300))

    @pytest.mark.parametrize(
        ("headers", "lifetime"),
        [
            (h((b"Cache-Control", b"s-maxage=10, max-age=20"), (b"Date", DATE), EXPIRES), 10.0),
            (h((b"Cache-Control", b"max-age=20"), (b"Date", DATE), EXPIRES), 20.0),
            (h((b"Date", DATE), EXPIRES), 300.0),
            (h((b"Date", DATE), (b"Expires", format_http_date(NOW - 300))), 0.0),
            (h((b"Date", DATE), (b"Expires", b"0")), 0.0),  # invalid: already expired (5.3)
            (h((b"Date", DATE), EXPIRES, EXPIRES), 0.0),  # two Expires lines: invalid
            (h((b"Cache-Control", b"max-age=abc"), (b"Date", DATE), EXPIRES), 0.0),
            (h((b"Date", DATE)), 0.0),
        ],
    )
    def test_order(self, headers: Fields, lifetime: float) -> None:
        """Section 4.2.1: the first of s-maxage, max-age, Expires - Date that is present."""
        assert store(headers).lifetime == lifetime

    def test_expires_without_date_counts_from_arrival(self) -> None:
        """Section 4.2.1 (RFC 9110 6.6.1): a response without Date is dated when it arrived."""
        assert store(h(self.EXPIRES), response_time=NOW + 100).lifetime == 200.0

    @pytest.mark.parametrize(
        ("modified_ago", "lifetime"),
        [(1000.0, 100.0), (10 * 86400.0, 86400.0), (20 * 86400.0, 86400.0), (-100.0, 0.0)],
    )
    def test_heuristic_is_a_tenth_capped_at_a_day(self, modified_ago: float, lifetime: float) -> None:
        """Section 4.2.2: 10% of the time since Last-Modified, capped (here at a day)."""
        headers = h((b"Date", DATE), (b"Last-Modified", format_http_date(NOW - modified_ago)))
        assert store(headers, policy=HEURISTIC).lifetime == lifetime
        assert store(headers).lifetime == 0.0  # not configured: none

    def test_heuristic_only_for_heuristic_statuses(self) -> None:
        """Section 4.2.2: a heuristic lifetime only for a status cacheable by default, or public."""
        lm = (b"Last-Modified", format_http_date(NOW - 1000))
        assert store(h((b"Date", DATE), lm), status=302, policy=HEURISTIC).lifetime == 0.0
        public = h((b"Date", DATE), lm, (b"Cache-Control", b"public"))
        assert store(public, status=302, policy=HEURISTIC).lifetime == 100.0

    def test_no_heuristic_with_explicit_freshness(self) -> None:
        """Section 4.2.2: a cache does not use heuristics when an explicit expiration is present."""
        headers = h((b"Date", DATE), (b"Last-Modified", format_http_date(NOW - 1000)), (b"Expires", b"x"))
        assert store(headers, policy=HEURISTIC).lifetime == 0.0


# -- RFC 9111 section 4.2.3: age -----------------------------------------------------------------


def rfc_current_age(
    date_value: float, age_value: int, request_time: float, response_time: float, now: float
) -> float:
    """Section 4.2.3's formulas, written out as the RFC gives them."""
    apparent_age = max(0.0, response_time - date_value)
    response_delay = response_time - request_time
    corrected_age_value = age_value + response_delay
    corrected_initial_age = max(apparent_age, corrected_age_value)
    resident_time = now - response_time
    return corrected_initial_age + resident_time


class TestAge:
    """Section 4.2.3: apparent age, corrected age, resident time."""

    def test_a_worked_example(self) -> None:
        """Section 4.2.3: Age 30 after a 2 s round trip, Date 10 s old, 5 s in the cache."""
        s = store(
            h((b"Date", format_http_date(NOW - 10)), (b"Age", b"30"), (b"Cache-Control", b"max-age=60")),
            request_time=NOW - 2,
        )
        assert s.initial_age == 32.0
        assert current_age(s, NOW + 5) == 37.0

    def test_an_invalid_age_is_always_stale(self) -> None:
        """Section 5.1 (and 4.2.3): an invalid Age makes the response stale, whatever its lifetime."""
        s = store(h((b"Age", b"abc"), (b"Cache-Control", b"max-age=3600")))
        assert s.initial_age == DELTA_MAX
        assert usable(s, req(), NOW) is Use.MISS

    def test_a_clock_gone_back_adds_no_residence(self) -> None:
        """Section 4.2.3: resident time is never negative."""
        s = store(
            h(
                (b"Age", b"5"),
            )
        )
        assert current_age(s, NOW - 100) == 5.0

    @given(
        date_offset=st.integers(min_value=-(10**6), max_value=10**6),
        age_value=st.integers(min_value=0, max_value=10**7),
        delay=st.integers(min_value=0, max_value=1000),
        resident=st.integers(min_value=0, max_value=10**7),
        later=st.integers(min_value=0, max_value=10**7),
    )
    def test_current_age_property(
        self, date_offset: int, age_value: int, delay: int, resident: int, later: int
    ) -> None:
        """Section 4.2.3: current_age is the RFC's formula, non-decreasing in now, and never below
        the corrected initial age."""
        request_time = NOW - delay
        date_value = NOW + date_offset
        s = store(
            h((b"Date", format_http_date(date_value)), (b"Age", str(age_value).encode())),
            request_time=request_time,
        )
        now = NOW + resident
        age = current_age(s, now)
        assert age == rfc_current_age(date_value, age_value, request_time, NOW, now)
        assert age >= s.initial_age
        assert current_age(s, now + later) >= age


# -- RFC 9111 sections 4.2.4 and 5.2.1: reuse; RFC 5861 ------------------------------------------


def aged(cc: bytes, age: int, **more: bytes) -> tuple[Stored, float]:
    """A response stored at NOW with ``cc`` and the extra fields, and the time at which its age is ``age``."""
    headers = h(
        (b"Date", DATE), (b"Cache-Control", cc), *((k.replace("_", "-").encode(), v) for k, v in more.items())
    )
    return store(headers), NOW + age


class TestReuse:
    """Sections 4.2.4 and 5.2.1: fresh, stale, validated or missed."""

    def test_fresh_then_stale(self) -> None:
        """Section 4.2: fresh while age < lifetime; stale without a validator is a miss."""
        s, _ = aged(b"max-age=60", 0)
        assert usable(s, req(), NOW + 59) is Use.FRESH
        assert usable(s, req(), NOW + 60) is Use.MISS
        v, _ = aged(b"max-age=60", 0, etag=b'"v"')
        assert usable(v, req(), NOW + 61) is Use.VALIDATE

    @pytest.mark.parametrize(("age", "use"), [(10, Use.FRESH), (11, Use.VALIDATE)])
    def test_request_max_age(self, age: int, use: Use) -> None:
        """Section 5.2.1.1: the client wants an age at most max-age."""
        s, now = aged(b"max-age=60", age, etag=b'"v"')
        assert usable(s, req(cache_control=b"max-age=10"), now) is use

    @pytest.mark.parametrize(("age", "use"), [(40, Use.FRESH), (41, Use.VALIDATE)])
    def test_min_fresh(self, age: int, use: Use) -> None:
        """Section 5.2.1.3: the response must stay fresh at least min-fresh longer."""
        s, now = aged(b"max-age=60", age, etag=b'"v"')
        assert usable(s, req(cache_control=b"min-fresh=20"), now) is use

    @pytest.mark.parametrize(
        ("request_cc", "age", "use"),
        [
            (b"max-stale=10", 70, Use.STALE),
            (b"max-stale=10", 71, Use.VALIDATE),
            (b"max-stale", 10**6, Use.STALE),  # without a value: any staleness
            (b"max-stale=abc", 61, Use.VALIDATE),  # invalid: 0
        ],
    )
    def test_max_stale(self, request_cc: bytes, age: int, use: Use) -> None:
        """Section 5.2.1.2: the client accepts that much staleness (any, without a value)."""
        s, now = aged(b"max-age=60", age, etag=b'"v"')
        assert usable(s, req(cache_control=request_cc), now) is use

    @pytest.mark.parametrize("forbids", [b"must-revalidate", b"proxy-revalidate", b"s-maxage=60"])
    def test_stale_use_forbidden(self, forbids: bytes) -> None:
        """Sections 5.2.2.2, 5.2.2.8, 5.2.2.10: no stale use, not even as max-stale allows."""
        s, now = aged(b"max-age=60, stale-while-revalidate=100, " + forbids, 70, etag=b'"v"')
        assert usable(s, req(cache_control=b"max-stale"), now) is Use.VALIDATE
        assert usable(s, req(), now) is Use.VALIDATE

    def test_request_no_cache(self) -> None:
        """Section 5.2.1.4: the client asks for validation even of a fresh response."""
        s, now = aged(b"max-age=60", 0, etag=b'"v"')
        assert usable(s, req(cache_control=b"no-cache"), now) is Use.VALIDATE
        bare, now = aged(b"max-age=60", 0)
        assert usable(bare, req(cache_control=b"no-cache"), now) is Use.MISS

    def test_response_no_cache(self) -> None:
        """Section 5.2.2.4: a response with no-cache is validated every time."""
        s, now = aged(b"max-age=60, no-cache", 0, last_modified=DATE)
        assert usable(s, req(), now) is Use.VALIDATE

    def test_pragma_only_without_cache_control(self) -> None:
        """Section 5.4: Pragma: no-cache counts only when the request has no Cache-Control."""
        s, now = aged(b"max-age=60", 0, etag=b'"v"')
        assert usable(s, req(pragma=b"no-cache"), now) is Use.VALIDATE
        assert usable(s, req(pragma=b"No-Cache"), now) is Use.VALIDATE
        assert usable(s, req(pragma=b"no-cache", cache_control=b"max-stale"), now) is Use.FRESH

    @pytest.mark.parametrize(
        ("age", "request_cc", "use"),
        [
            (59, None, Use.FRESH),
            (60, None, Use.REFRESH),
            (90, None, Use.REFRESH),
            (91, None, Use.VALIDATE),
            (70, b"max-age=100", Use.VALIDATE),  # a request max-age: no stale answer without max-stale
        ],
    )
    def test_stale_while_revalidate(self, age: int, request_cc: bytes | None, use: Use) -> None:
        """RFC 5861 section 3: within the window the stale response is used and refreshed."""
        s, now = aged(b"max-age=60, stale-while-revalidate=30", age, etag=b'"v"')
        request = req(cache_control=request_cc) if request_cc is not None else req()
        assert usable(s, request, now) is use


class TestStaleIfError:
    """RFC 5861 section 4: a stale response in place of an error, within a window."""

    @pytest.mark.parametrize(("age", "allowed"), [(30, True), (90, True), (91, False)])
    def test_the_response_window(self, age: int, allowed: bool) -> None:
        """RFC 5861 section 4: the response's stale-if-error bounds the staleness."""
        s, now = aged(b"max-age=60, stale-if-error=30", age)
        assert stale_if_error_allows(s, req(), now) is allowed

    def test_the_request_window_wins(self) -> None:
        """RFC 5861 section 4: the request's stale-if-error, when given, replaces the response's."""
        s, now = aged(b"max-age=60, stale-if-error=30", 200)
        assert stale_if_error_allows(s, req(cache_control=b"stale-if-error=200"), now)
        assert not stale_if_error_allows(s, req(cache_control=b"stale-if-error=10"), NOW + 80)
        bare, now = aged(b"max-age=60", 200)
        assert not stale_if_error_allows(bare, req(), now)
        assert stale_if_error_allows(bare, req(cache_control=b"stale-if-error=140"), now)

    @pytest.mark.parametrize("forbids", [b"must-revalidate", b"no-cache", b"s-maxage=60"])
    def test_forbidden(self, forbids: bytes) -> None:
        """RFC 5861 section 4 and RFC 9111 5.2.2: nothing that forbids stale use."""
        s, now = aged(b"max-age=60, stale-if-error=100, " + forbids, 70)
        assert not stale_if_error_allows(s, req(), now)


# -- RFC 9111 section 4.3: validation ------------------------------------------------------------


class TestValidators:
    """Section 4.3.1: the conditional request is made from the stored validators."""

    def test_both(self) -> None:
        """Section 4.3.1: If-None-Match from ETag, If-Modified-Since from Last-Modified."""
        s = store(h((b"ETag", b' W/"x" '), (b"Last-Modified", DATE)))
        assert validators(s) == ((b"If-None-Match", b'W/"x"'), (b"If-Modified-Since", DATE))

    def test_none(self) -> None:
        """Section 4.3.1: no validator, no conditional fields (two ETag lines are none)."""
        assert validators(store(h((b"Expires", DATE)))) == ()
        assert validators(store(h((b"ETag", b'"a"'), (b"ETag", b'"b"')))) == ()


class TestFreshening:
    """Section 4.3.4: which stored response a 304 selects, and how it updates it (3.2)."""

    STORED = h(
        (b"Date", format_http_date(NOW - 100)),
        (b"Cache-Control", b"max-age=10"),
        (b"ETag", b'"a"'),
        (b"Content-Type", b"text/plain"),
        (b"Content-Encoding", b"gzip"),
        (b"Content-MD5", b"old"),
        (b"Content-Range", b"bytes 0-1/2"),
        (b"X-Old", b"1"),
    )

    @pytest.mark.parametrize(
        ("stored", "fresh", "selected"),
        [
            (b'"a"', h((b"ETag", b'"a"')), True),
            (b'"a"', h((b"ETag", b'"b"')), False),
            (b'"a"', h((b"ETag", b'W/"a"')), True),  # no strong validator: a weak one that corresponds
            (b'W/"a"', h((b"ETag", b'"a"')), False),
            (b'"a"', h(), False),  # no validator in the 304: only a stored response without one
            (b'"a"', h((b"ETag", b'"b"'), (b"Last-Modified", DATE)), False),
        ],
    )
    def test_selected_by_etag(self, stored: bytes, fresh: Fields, selected: bool) -> None:
        """Section 4.3.4: a strong validator selects the stored responses with the same one."""
        s = store(h((b"ETag", stored), (b"Expires", DATE)))
        assert selected_by_304(s, fresh) is selected

    def test_a_weak_etag_selects_the_matching_stored_response(self) -> None:
        """Section 4.3.4: with no strong validator but a weak one matching a stored response, that
        response is selected (the cache itself sent If-None-Match: W/"a")."""
        s = store(h((b"ETag", b'W/"a"'), (b"Expires", DATE)))
        assert selected_by_304(s, h((b"ETag", b'W/"a"')))

    def test_selected_by_last_modified(self) -> None:
        """Section 4.3.4: without an ETag, a Last-Modified equal to the stored one."""
        s = store(h((b"Last-Modified", DATE), (b"Expires", DATE)))
        assert selected_by_304(s, h((b"Last-Modified", DATE)))
        assert not selected_by_304(s, h((b"Last-Modified", format_http_date(NOW + 1))))
        assert not selected_by_304(store(h((b"Expires", DATE))), h((b"Last-Modified", DATE)))

    def freshened(self, fresh: Fields, response_time: float = NOW) -> Stored:
        s = store(self.STORED, request_time=NOW - 100, response_time=NOW - 100)
        return freshen(s, fresh, req(), response_time - 1, response_time, POLICY)

    def test_fields_replaced_but_those_about_the_body(self) -> None:
        """Section 3.2: the 304's fields replace the stored ones, but Content-Length,
        Content-Encoding, Content-MD5 and Content-Range; Content-Type is replaced."""
        s = self.freshened(
            h(
                (b"Date", DATE),
                (b"Cache-Control", b"max-age=60"),
                (b"ETag", b'"a"'),
                (b"Content-Type", b"text/html"),
                (b"Content-Encoding", b"br"),
                (b"Content-MD5", b"new"),
                (b"Content-Range", b"bytes 0-3/4"),
                (b"Content-Length", b"99"),
                (b"X-New", b"2"),
            )
        )
        fields = {n.lower(): v for n, v in s.headers}
        assert fields[b"content-type"] == b"text/html"
        assert (fields[b"content-encoding"], fields[b"content-md5"]) == (b"gzip", b"old")
        assert fields[b"content-range"] == b"bytes 0-1/2"
        assert b"content-length" not in fields
        assert (fields[b"x-old"], fields[b"x-new"]) == (b"1", b"2")
        assert [v for n, v in s.headers if n.lower() == b"date"] == [DATE]
        assert s.lifetime == 60.0
        assert usable(s, req(), NOW + 30) is Use.FRESH

    def test_a_304_without_date_is_dated_at_its_arrival(self) -> None:
        """Section 4.3.4 and RFC 9110 6.6.1: the stored Date gives way to the 304's arrival time."""
        s = self.freshened(
            h(
                (b"ETag", b'"a"'),
            ),
            response_time=NOW,
        )
        assert [v for n, v in s.headers if n.lower() == b"date"] == [DATE]
        assert s.initial_age == 1.0  # its round trip
        assert usable(s, req(), NOW + 5) is Use.FRESH  # max-age=10 counted anew

    def test_a_304_age_counts(self) -> None:
        """Section 4.2.3: the 304's Age is its age; the stored one keeps no Age field."""
        s = self.freshened(h((b"Date", DATE), (b"Age", b"7")))
        assert s.initial_age == 8.0
        assert b"age" not in names(s)

    def test_a_304s_connection_listed_fields_are_not_stored(self) -> None:
        """Section 3.2: the fields excepted from storage in 3.1 (Connection-listed ones) are not
        added from the 304."""
        s = self.freshened(h((b"Date", DATE), (b"Connection", b"X-Hop"), (b"X-Hop", b"1")))
        assert b"x-hop" not in names(s)


class TestClientConditionals:
    """RFC 9110 section 13.2.2: the client's own conditional request, answered from the store."""

    S = store(h((b"ETag", b'W/"a"'), (b"Last-Modified", format_http_date(NOW - 100)), (b"Expires", DATE)))

    @pytest.mark.parametrize(
        ("fields", "not_modified"),
        [
            ({"if_none_match": b'"a"'}, True),  # weak comparison
            ({"if_none_match": b'W/"a"'}, True),
            ({"if_none_match": b'"b", W/"a"'}, True),
            ({"if_none_match": b'"b"'}, False),
            ({"if_none_match": b"*"}, True),
            ({"if_modified_since": format_http_date(NOW - 100)}, True),
            ({"if_modified_since": format_http_date(NOW)}, True),
            ({"if_modified_since": format_http_date(NOW - 101)}, False),
            ({"if_modified_since": b"yesterday"}, False),  # invalid: ignored (13.1.3)
            ({"if_none_match": b'"b"', "if_modified_since": format_http_date(NOW)}, False),  # INM wins
            ({"if_none_match": b'"a"', "if_modified_since": format_http_date(NOW - 200)}, True),
            ({}, False),
        ],
    )
    def test_table(self, fields: dict[str, bytes], not_modified: bool) -> None:
        """RFC 9110 sections 13.1.2, 13.1.3, 13.2.2: If-None-Match, weakly, before If-Modified-Since."""
        assert client_not_modified(self.S, req(**fields)) is not_modified

    def test_star_without_an_etag(self) -> None:
        """RFC 9110 section 13.1.2: ``*`` matches any current representation."""
        s = store(
            h(
                (b"Expires", DATE),
            )
        )
        assert client_not_modified(s, req(if_none_match=b"*"))
        assert not client_not_modified(s, req(if_none_match=b'"a"'))


# -- RFC 9111 section 4.4: invalidation ----------------------------------------------------------


class TestInvalidation:
    """Section 4.4: an unsafe method's non-error response invalidates Location and Content-Location."""

    @pytest.mark.parametrize(
        ("headers", "targets"),
        [
            (h((b"Location", b"/a"), (b"Content-Location", b"/b?x=1")), [b"/a", b"/b?x=1"]),
            (h((b"Location", b"http://Example.com/a")), [b"/a"]),
            (h((b"Location", b"https://example.com")), [b"/"]),
            (h((b"Content-Location", b"http://example.com:8080/a")), []),  # another authority
            (h((b"Location", b"http://other.example/a")), []),
            (h((b"Location", b"http://example.com.evil/a")), []),
            (h((b"Location", b"//example.com/a")), []),
            (h(), []),
        ],
    )
    def test_same_host_only(self, headers: Fields, targets: list[bytes]) -> None:
        """Section 4.4: only URIs with the same host as the target's are invalidated."""
        assert invalidated_targets(b"POST", 201, b"example.com", headers) == targets

    @pytest.mark.parametrize("method", [b"GET", b"HEAD", b"OPTIONS", b"TRACE"])
    def test_safe_methods_invalidate_nothing(self, method: bytes) -> None:
        """Section 4.4: only unsafe methods invalidate."""
        assert invalidated_targets(method, 200, b"example.com", h((b"Location", b"/a"))) == []

    @pytest.mark.parametrize("status", [199, 400, 404, 500, 503])
    def test_errors_invalidate_nothing(self, status: int) -> None:
        """Section 4.4: only a non-error (2xx, 3xx) response invalidates."""
        assert invalidated_targets(b"DELETE", status, b"example.com", h((b"Location", b"/a"))) == []

    def test_absolute_uris_need_a_host(self) -> None:
        """Section 4.4: without the request's host an absolute URI cannot be compared."""
        headers = h((b"Location", b"http://example.com/a"), (b"Content-Location", b"/b"))
        assert invalidated_targets(b"PUT", 204, None, headers) == [b"/b"]


# -- RFC 9111 section 4.1: Vary ------------------------------------------------------------------


class TestVary:
    """Section 4.1: the selecting fields, and the request's values of them normalised."""

    def test_names_normalised(self) -> None:
        """Section 4.1: field names are case-insensitive; order and duplicates do not matter."""
        headers = h((b"Vary", b"Accept-Encoding, accept"), (b"Vary", b" ACCEPT ,User-Agent,,"))
        assert vary_names(headers) == (b"accept", b"accept-encoding", b"user-agent")
        assert vary_names(h()) == ()

    @pytest.mark.parametrize("lines", [[b"*"], [b"Accept, *"], [b"Accept", b" * "]])
    def test_star_matches_nothing(self, lines: list[bytes]) -> None:
        """Section 4.1: Vary: * always fails to match."""
        assert vary_names(tuple((b"Vary", v) for v in lines)) is None

    def test_values_normalised(self) -> None:
        """Section 4.1: whitespace around list elements is no difference."""
        a = vary_values((b"accept-encoding", b"accept"), req(accept_encoding=b"gzip,br"))
        b = vary_values((b"accept-encoding", b"accept"), req(accept_encoding=b" gzip ,\tbr "))
        assert a == b == (b"gzip, br", None)
        assert vary_values((b"accept-encoding",), req(accept_encoding=b"br, gzip")) != a[:1]

    def test_stored_with_its_variant(self) -> None:
        """Section 4.1: the stored response keeps the selecting fields and the request's values."""
        s = store(h((b"Vary", b"Accept"), (b"Expires", DATE)), request=req(accept=b"text/html"))
        assert (s.vary, s.vary_key) == ((b"accept",), (b"text/html",))
