"""Context features from plain request values: time, device, location, user.

``api`` reads one decide request and hands the plain values it found to
:func:`derive_context` as a :class:`RequestFacts`; the result is the
namespaced feature mapping that :func:`bandits.features.shared_line` turns
into the VW ``shared`` example and that the decision log stores. The function
is pure and deterministic: the same facts, ``now`` and library data give the
same features (the clock is an argument; the only library data are the
ua-parser regexes and the iptocc registry tables, see "Versions" below).

Privacy. Every output is coarse by construction: the IP address is used only
for an offline country lookup and never appears in the output; the location
is a country code unless the caller *explicitly* sends a region or city; the
device is reduced to three coarse categories (type, OS family, browser
family) with no versions, models or brands.

Features (namespace -> name: value)::

    time      hour: "00".."23"   local hour as a category (see below)
              hour_sin, hour_cos: sin/cos(2*pi*hour/24), rounded to 6 decimals
              daypart: "night" 0-5 | "morning" 6-11 | "afternoon" 12-17 | "evening" 18-23
              weekday: "mon".."sun"
              weekend: bool (Saturday or Sunday; ISO weekday >= 6)
    device    type: "mobile" | "tablet" | "desktop" | "bot" | "unknown"
              os: "ios" | "android" | "windows" | "macos" | "linux" | "chromeos" | "other" | "unknown"
              browser: "chrome" | "safari" | "firefox" | "edge" | "samsung" | "opera" | "other" | "unknown"
    location  country: ISO 3166-1 alpha-2, upper case, or "unknown"
              region, city: lower-cased, only when the request names them explicitly
    user      the caller's flat features, checked by bandits.features.validate_features

``"other"`` means the family is known but not one of the coarse ones;
``"unknown"`` means there was nothing to go on (no User-Agent, no hint).

Hour as a category. VW reads ``hour=09`` as one indicator per hour, so with
``-q`` interactions every block gets its own effect per hour: no shape is
imposed on the daily cycle (a number ``hour:9`` would force a linear trend
from midnight to midnight). ``hour_sin``/``hour_cos`` add the first harmonic
of the daily cycle (a smooth, 2-parameter prior that generalises to hours
with little data); they are rounded so that the logged value does not depend
on the last bit of the platform's libm.

Time. The local time is the request ``timestamp`` (else ``now``; naive values
are UTC) converted with :mod:`zoneinfo` to the request ``timezone``, else the
slot's ``default_timezone``. Zone names are IANA keys; a case-insensitive
match is accepted ("europe/berlin"), unknown keys raise :class:`InvalidFeature`
on ``context.time.timezone``. The zone database is the system one
(``/usr/share/zoneinfo``) or the ``tzdata`` package where the system has none.

Device. The User-Agent is parsed with ua-parser 1.x (``ua_parser.parse``);
the coarse triple is cached in a bounded LRU keyed by the (truncated)
User-Agent string. Rules, in order:

* bot: ua-parser's device family ``Spider`` or a marker in
  ``_BOT_MARKERS`` (crawler words, command-line HTTP clients, headless
  browsers);
* tablet: iPad, Kindle/Silk, ua-parser's generic tablet brands, "Tablet" in
  the string, and Android without "Mobile" (Google's advice to tablet
  browsers: https://developer.chrome.com/docs/multidevice/user-agent/);
* mobile: iPhone/iPod, Android with "Mobile", any other "Mobi" marker or a
  mobile OS;
* desktop: a desktop OS (Windows, macOS, Linux, ChromeOS);
* otherwise unknown (including TVs and consoles, which are none of the four).

Client hints then refine it (https://wicg.github.io/ua-client-hints/):
``Sec-CH-UA-Mobile: ?1`` makes the type mobile and ``?0`` demotes a derived
mobile to tablet on Android and desktop elsewhere; ``Sec-CH-UA-Platform``
names the OS; a specific brand in ``Sec-CH-UA`` (Edge, Opera, Samsung
Internet, Google Chrome) names the browser. A bot is never turned into
something else by hints. Finally, the explicit request fields
``device.type/os/browser`` override each derived value. Explicit ``os`` and
``browser`` are lower-cased and mapped through the same family tables
("Mac OS X" -> "macos"); an unrecognised name is kept, lower-cased.

Location. The country comes from, in order: the explicit ``location.country``
field; the first usable configured geo header (``geo_header_names``, e.g.
Cloudflare's ``CF-IPCountry``); the offline RIR lookup of the client IP with
``iptocc`` (private, loopback and other non-global addresses give none).
Placeholder codes (``XX`` unknown, ``T1`` Tor, ``ZZ``, and the legacy
``A1/A2/O1/AP/EU``) are treated as no answer. Only trust geo headers your own
CDN sets: a client can send ``CF-IPCountry`` itself, so configure
``geo_header_names=()`` when the service is not behind one. RIR data name the
country a block is *assigned* to, which agrees with commercial geo-IP for
about 95% of IPv4 addresses (iptocc's documentation). No continent is
derived: neither library provides it.

Limits and errors. Headers are not caller fields: a User-Agent longer than
``_MAX_USER_AGENT`` characters is truncated before parsing, and an over-long
or malformed client-hint or geo-header value is ignored. Request *fields*
(explicit device, location, time zone, user features) are validated: a wrong
type, an over-long string or an unknown key raises :class:`InvalidFeature`
whose ``field`` is the dotted request field, e.g. ``context.location.country``.

Versions. Device and country derivation depend on the installed
``ua-parser-builtins`` regexes and the ``iptocc`` data release; record them
with the model when reproducibility across upgrades matters.
"""

from __future__ import annotations

import math
import re
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import NamedTuple

import iptocc
import ua_parser

from bandits.errors import InvalidFeature
from bandits.features import validate_features

__all__ = [
    "DAYPARTS",
    "DEFAULT_GEO_HEADERS",
    "DEVICE_TYPES",
    "ContextLimits",
    "ContextValue",
    "RequestFacts",
    "derive_context",
]

ContextValue = str | float | bool

DEFAULT_GEO_HEADERS: tuple[str, ...] = (
    "cf-ipcountry",  # Cloudflare (IP Geolocation setting)
    "cloudfront-viewer-country",  # Amazon CloudFront (origin request policy)
    "x-vercel-ip-country",  # Vercel
    "x-appengine-country",  # Google App Engine
)
"""Country headers set by common CDNs and platforms, lower-cased, in order of trust.

Fastly, Akamai and the Google Cloud load balancer have no fixed header name:
their customers choose one (e.g. ``x-fastly-country-code``); add it to the
slot's geo header names.
"""

DEVICE_TYPES: tuple[str, ...] = ("mobile", "tablet", "desktop", "bot", "unknown")
DAYPARTS: tuple[str, ...] = ("night", "morning", "afternoon", "evening")
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_MAX_USER_AGENT = 512  # real browsers send < 300 characters
_MAX_HINT = 256
_UA_CACHE_SIZE = 4096  # distinct User-Agents kept; at most ~2 MB of keys
_MAX_TIMEZONE = 64  # the longest IANA key is 32 characters

# ISO 3166 user-assigned or legacy geo-IP codes that name no country.
_NO_COUNTRY = frozenset({"XX", "T1", "ZZ", "A1", "A2", "O1", "AP", "EU"})
_COUNTRY = re.compile(r"[A-Z]{2}")

_DEVICE_KEYS = frozenset({"type", "os", "browser"})
_LOCATION_KEYS = frozenset({"country", "region", "city"})


@dataclass(frozen=True)
class ContextLimits:
    """Bounds on caller-supplied context fields."""

    max_user_features: int = 32
    """At most this many ``user`` features per request."""
    max_name_length: int = 64
    """Longest ``user`` feature name."""
    max_value_length: int = 256
    """Longest string value: ``user`` values, explicit device os/browser, region, city."""

    def __post_init__(self) -> None:
        for name in ("max_user_features", "max_name_length", "max_value_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ContextLimits.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class RequestFacts:
    """Plain values api/ extracted from one request. All optional."""

    timestamp: datetime | None = None
    """Request timestamp (aware; naive is taken as UTC); None -> the ``now`` argument."""
    timezone: str | None = None
    """IANA zone from the request body; None -> the slot's default."""
    user_agent: str | None = None
    """The User-Agent header."""
    client_hints: Mapping[str, str] = field(default_factory=dict)
    """Lower-cased header names: 'sec-ch-ua-mobile', 'sec-ch-ua-platform', 'sec-ch-ua'."""
    device: Mapping[str, object] = field(default_factory=dict)
    """Explicit request fields 'type', 'os', 'browser'; each overrides the derived value."""
    location: Mapping[str, object] = field(default_factory=dict)
    """Explicit request fields 'country', 'region', 'city'."""
    geo_headers: Mapping[str, str] = field(default_factory=dict)
    """Lower-cased header name -> value, only for the configured geo header names."""
    ip: str | None = None
    """Client address; used only for the offline country lookup, never output."""
    user: Mapping[str, object] = field(default_factory=dict)
    """Caller-supplied flat user features."""


# ---------------------------------------------------------------- time


@cache
def _zone_keys() -> dict[str, str]:
    """Case-folded IANA key -> key, from the system database or tzdata (read once)."""
    keys = zoneinfo.available_timezones() - {"localtime", "Factory"}  # host-dependent aliases
    return {key.casefold(): key for key in keys}


@lru_cache(maxsize=256)
def _zone(key: str) -> zoneinfo.ZoneInfo | None:
    canonical = _zone_keys().get(key.casefold())
    return None if canonical is None else zoneinfo.ZoneInfo(canonical)


def _resolve_zone(name: object, where: str) -> zoneinfo.ZoneInfo:
    if not isinstance(name, str) or not name or len(name) > _MAX_TIMEZONE:
        raise InvalidFeature(f"{where} must be an IANA time zone name", field=where)
    zone = _zone(name.strip())
    if zone is None:
        raise InvalidFeature(f"{where}: unknown IANA time zone {name!r}", field=where)
    return zone


def _time_features(
    timestamp: object, timezone: object, now: datetime, default_timezone: str
) -> dict[str, ContextValue]:
    if timestamp is None:
        timestamp = now
    if not isinstance(timestamp, datetime):
        raise InvalidFeature(
            "context.time.timestamp must be a date-time", field="context.time.timestamp"
        )
    if timestamp.tzinfo is None or timestamp.utcoffset() is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    if timezone is None:
        zone = _resolve_zone(default_timezone, "default_timezone")
    else:
        zone = _resolve_zone(timezone, "context.time.timezone")
    local = timestamp.astimezone(zone)
    hour = local.hour
    angle = 2.0 * math.pi * hour / 24.0
    weekday = local.weekday()  # Monday = 0
    return {
        "hour": f"{hour:02d}",
        "hour_sin": round(math.sin(angle), 6) + 0.0,  # + 0.0 turns -0.0 into 0.0
        "hour_cos": round(math.cos(angle), 6) + 0.0,
        "daypart": DAYPARTS[hour // 6],
        "weekday": _WEEKDAYS[weekday],
        "weekend": weekday >= 5,
    }


# ---------------------------------------------------------------- device


class _Device(NamedTuple):
    type: str
    os: str
    browser: str


# ua-parser OS family (case-folded) -> coarse family; unlisted known families -> "other".
_OS_FAMILIES: dict[str, str] = {
    "ios": "ios",
    "ipados": "ios",
    "android": "android",
    "fire os": "android",
    "windows": "windows",
    "windows phone": "windows",
    "windows mobile": "windows",
    "windows rt": "windows",
    "mac os x": "macos",
    "mac os": "macos",
    "macos": "macos",
    "linux": "linux",
    "ubuntu": "linux",
    "debian": "linux",
    "fedora": "linux",
    "red hat": "linux",
    "suse": "linux",
    "opensuse": "linux",
    "arch linux": "linux",
    "mint": "linux",
    "linux mint": "linux",
    "gentoo": "linux",
    "centos": "linux",
    "chrome os": "chromeos",
    "chromium os": "chromeos",
    "chromeos": "chromeos",
}
_MOBILE_OSES = frozenset({"ios", "android"})
_DESKTOP_OSES = frozenset({"windows", "macos", "linux", "chromeos"})

# Browser family prefixes (case-folded), most specific first.
_BROWSER_PREFIXES: tuple[tuple[str, str], ...] = (
    ("samsung internet", "samsung"),
    ("edge", "edge"),
    ("microsoft edge", "edge"),
    ("opera", "opera"),
    ("firefox", "firefox"),
    ("chrome", "chrome"),  # Chrome, Chrome Mobile, Chrome Mobile iOS/WebView
    ("chromium", "chrome"),
    ("google chrome", "chrome"),
    ("headlesschrome", "chrome"),
    ("mobile safari", "safari"),
    ("safari", "safari"),
)

# Markers searched in the lower-cased User-Agent and device family. Plain substring
# tests: one re.IGNORECASE alternation of the bot markers measured ~40 us per
# User-Agent, these loops a few us.
_BOT_WORD = re.compile(r"bot\b")  # Googlebot/, bingbot/, GPTBot/, UptimeRobot/ ...
_BOT_MARKERS = (
    "crawl", "spider", "slurp", "scrapy", "headless", "phantomjs", "lighthouse",
    "facebookexternalhit", "curl/", "wget/", "python-requests", "python-urllib", "aiohttp",
    "python-httpx", "go-http-client", "java/", "libwww-perl", "apache-httpclient",
    "node-fetch", "axios/",
)  # fmt: skip
_NOT_A_COMPUTER = (
    "smart-tv", "smarttv", "hbbtv", " tv ", "web0s", "netcast", "crkey", "playstation",
    "xbox", "nintendo",
)  # fmt: skip
_TABLET_DEVICES = ("ipad", "kindle", "tablet", "silk/", "playbook")
_MOBILE_DEVICES = ("iphone", "ipod", "smartphone", "mobi")
_TABLET_BRANDS = frozenset({"generic_android_tablet"})


def _contains(text: str, markers: tuple[str, ...]) -> bool:
    for marker in markers:  # a plain loop: any() over a generator costs twice as much
        if marker in text:
            return True
    return False


def _is_bot(lowered: str) -> bool:
    for match in _BOT_WORD.finditer(lowered):
        if lowered[max(0, match.start() - 2) : match.start()] != "cu":  # Cubot phones
            return True
    return _contains(lowered, _BOT_MARKERS)


def _os_family(name: str | None) -> str:
    if not name:
        return "unknown"
    return _OS_FAMILIES.get(name.strip().casefold(), "other")


def _browser_family(name: str | None) -> str:
    if not name:
        return "unknown"
    folded = name.strip().casefold()
    for prefix, family in _BROWSER_PREFIXES:
        if folded.startswith(prefix):
            return family
    return "other"


@lru_cache(maxsize=_UA_CACHE_SIZE)
def _device_from_user_agent(user_agent: str) -> _Device:
    """Coarse (type, os, browser) of one User-Agent string; cached (LRU)."""
    if not user_agent.strip():
        return _Device("unknown", "unknown", "unknown")
    parsed = ua_parser.parse(user_agent)
    os = _os_family(parsed.os.family if parsed.os else None)
    browser = _browser_family(parsed.user_agent.family if parsed.user_agent else None)
    device_family = parsed.device.family.lower() if parsed.device else ""
    brand = (parsed.device.brand or "").lower() if parsed.device else ""
    lowered = user_agent.lower()
    if device_family == "spider" or _is_bot(lowered):
        kind = "bot"
    elif _contains(lowered, _NOT_A_COMPUTER) or _contains(device_family, _NOT_A_COMPUTER):
        kind = "unknown"
    elif (
        _contains(device_family, _TABLET_DEVICES)
        or brand in _TABLET_BRANDS
        or _contains(lowered, _TABLET_DEVICES)
        or (os == "android" and "mobile" not in lowered)
    ):
        kind = "tablet"
    elif _contains(device_family, _MOBILE_DEVICES) or _contains(lowered, _MOBILE_DEVICES):
        kind = "mobile"
    elif os in _MOBILE_OSES:
        kind = "mobile"
    elif os in _DESKTOP_OSES:
        kind = "desktop"
    else:
        kind = "unknown"
    return _Device(kind, os, browser)


_SF_STRING = re.compile(r'^\s*"([^"\\]*)"\s*$')  # RFC 8941 sf-string without escapes
_SF_BRAND = re.compile(r'"([^"\\]*)"\s*;\s*v\s*=')
# Sec-CH-UA brands that name a coarse browser, in priority order (Chrome last:
# Edge, Opera and Samsung Internet list "Chromium" and sometimes "Google Chrome" too).
_HINT_BRANDS: tuple[tuple[str, str], ...] = (
    ("microsoft edge", "edge"),
    ("opera", "opera"),
    ("opera gx", "opera"),
    ("samsung internet", "samsung"),
    ("google chrome", "chrome"),
)


def _hint(hints: Mapping[str, str], name: str) -> str | None:
    value = hints.get(name)
    if not isinstance(value, str) or len(value) > _MAX_HINT:
        return None  # a malformed header is ignored, never an error
    return value


def _apply_client_hints(device: _Device, hints: Mapping[str, str]) -> _Device:
    kind, os, browser = device
    if (platform := _hint(hints, "sec-ch-ua-platform")) is not None:
        match = _SF_STRING.match(platform)
        if match and match.group(1) and match.group(1).casefold() != "unknown":
            os = _os_family(match.group(1))
    if kind != "bot" and (mobile := _hint(hints, "sec-ch-ua-mobile")) is not None:
        if mobile.strip() == "?1":
            kind = "mobile"
        elif mobile.strip() == "?0" and kind == "mobile":
            kind = "tablet" if os == "android" else "desktop"
    if (brands := _hint(hints, "sec-ch-ua")) is not None:
        named = {brand.strip().casefold() for brand in _SF_BRAND.findall(brands)}
        for brand, family in _HINT_BRANDS:
            if brand in named:
                browser = family
                break
    return _Device(kind, os, browser)


def _explicit_string(value: object, where: str, max_length: int) -> str | None:
    """A bounded, whitespace-collapsed, lower-cased string; None/blank -> None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidFeature(f"{where} must be a string", field=where)
    if len(value) > max_length:
        raise InvalidFeature(f"{where} is longer than {max_length} characters", field=where)
    text = " ".join(value.split()).casefold()
    return text or None


def _checked_mapping(values: object, where: str, keys: frozenset[str]) -> Mapping[str, object]:
    if not isinstance(values, Mapping):
        raise InvalidFeature(f"{where} must be an object", field=where)
    for key in values:
        if key not in keys:
            raise InvalidFeature(
                f"{where} has unknown field {key!r}; expected {sorted(keys)}",
                field=f"{where}.{key}",
            )
    return values


def _device_features(facts: RequestFacts, limits: ContextLimits) -> dict[str, ContextValue]:
    explicit = _checked_mapping(facts.device, "context.device", _DEVICE_KEYS)
    user_agent = facts.user_agent
    if user_agent is not None and not isinstance(user_agent, str):
        raise InvalidFeature("the User-Agent must be a string", field="headers.user-agent")
    device = _device_from_user_agent((user_agent or "")[:_MAX_USER_AGENT])
    if not isinstance(facts.client_hints, Mapping):
        raise InvalidFeature("client hints must be a mapping", field="headers")
    if facts.client_hints:
        device = _apply_client_hints(device, facts.client_hints)
    kind, os, browser = device

    explicit_type = _explicit_string(explicit.get("type"), "context.device.type", 16)
    if explicit_type is not None:
        if explicit_type not in DEVICE_TYPES:
            raise InvalidFeature(
                f"context.device.type must be one of {', '.join(DEVICE_TYPES)}",
                field="context.device.type",
            )
        kind = explicit_type
    explicit_os = _explicit_string(explicit.get("os"), "context.device.os", limits.max_value_length)
    if explicit_os is not None:
        os = _OS_FAMILIES.get(explicit_os, explicit_os)
    explicit_browser = _explicit_string(
        explicit.get("browser"), "context.device.browser", limits.max_value_length
    )
    if explicit_browser is not None:
        family = _browser_family(explicit_browser)
        browser = explicit_browser if family == "other" else family
    return {"type": kind, "os": os, "browser": browser}


# ---------------------------------------------------------------- location


def _country_code(value: object) -> str | None:
    """An upper-cased alpha-2 code that names a country, else None."""
    if not isinstance(value, str) or len(value) > 8:
        return None
    code = value.strip().upper()
    if _COUNTRY.fullmatch(code) is None or code in _NO_COUNTRY:
        return None
    return code


def _country_from_ip(ip: object) -> str | None:
    """RIR country of a client address; None for private, reserved or malformed ones.

    iptocc parses the address itself and has no country for private, loopback,
    link-local, documentation or multicast ranges (all tested), so no
    ``ipaddress`` pre-check is needed (it would cost ~5 us against iptocc's 0.1 us).
    """
    if not isinstance(ip, str) or len(ip) > 64:
        return None
    address = ip.strip()
    if address[:7].lower() == "::ffff:" and "." in address:
        address = address[7:]  # IPv4-mapped IPv6 (dual-stack sockets report these)
    return _country_code(iptocc.country_code(address))


def _location_features(
    facts: RequestFacts, geo_header_names: Sequence[str], limits: ContextLimits
) -> dict[str, ContextValue]:
    explicit = _checked_mapping(facts.location, "context.location", _LOCATION_KEYS)
    features: dict[str, ContextValue] = {}

    country: str | None = None
    raw_country = explicit.get("country")
    if raw_country is not None:
        where = "context.location.country"
        if not isinstance(raw_country, str):
            raise InvalidFeature(f"{where} must be a string", field=where)
        country = raw_country.strip().upper()
        if _COUNTRY.fullmatch(country) is None:
            raise InvalidFeature(
                f"{where} must be an ISO 3166-1 alpha-2 code (two letters)", field=where
            )
        if country in _NO_COUNTRY:
            country = None  # the caller says "unknown": fall through to headers and IP
    if country is None and geo_header_names:
        if not isinstance(facts.geo_headers, Mapping):
            raise InvalidFeature("geo headers must be a mapping", field="headers")
        headers = {str(name).lower(): value for name, value in facts.geo_headers.items()}
        for name in geo_header_names:
            country = _country_code(headers.get(name.lower()))
            if country is not None:
                break
    if country is None and facts.ip is not None:
        country = _country_from_ip(facts.ip)
    features["country"] = country or "unknown"

    for name in ("region", "city"):
        value = _explicit_string(
            explicit.get(name), f"context.location.{name}", limits.max_value_length
        )
        if value is not None:
            features[name] = value
    return features


# ---------------------------------------------------------------- user


def _user_features(facts: RequestFacts, limits: ContextLimits) -> dict[str, ContextValue]:
    clean = validate_features(
        facts.user,
        field="context.user",
        max_features=limits.max_user_features,
        max_name_length=limits.max_name_length,
        max_value_length=limits.max_value_length,
    )
    return {name: value for name, value in clean.items()}  # numbers are floats already


# ---------------------------------------------------------------- entry point


def derive_context(
    facts: RequestFacts,
    *,
    now: datetime,
    default_timezone: str = "UTC",
    geo_header_names: Sequence[str] = DEFAULT_GEO_HEADERS,
    limits: ContextLimits = ContextLimits(),  # noqa: B008 - frozen, so a shared default is safe
) -> dict[str, dict[str, str | float | bool]]:
    """The context features of one decision, by namespace (see the module docstring).

    Returns a new mapping with exactly the keys ``time``, ``device``,
    ``location`` and ``user`` (``user`` may be empty). ``now`` is the
    service's clock, used when the request has no timestamp;
    ``default_timezone`` is the slot's zone; ``geo_header_names`` are the
    trusted country headers, in order of precedence.

    Raises InvalidFeature naming the dotted request field for a wrong type,
    an over-long string, an unknown key or an unknown time zone.
    """
    if not isinstance(facts, RequestFacts):
        raise TypeError(f"derive_context expects RequestFacts, got {type(facts).__name__}")
    return {
        "time": _time_features(facts.timestamp, facts.timezone, now, default_timezone),
        "device": _device_features(facts, limits),
        "location": _location_features(facts, geo_header_names, limits),
        "user": _user_features(facts, limits),
    }
