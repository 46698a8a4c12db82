"""Tests of bandits.context: real User-Agents, real zone data, real iptocc lookups."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from bandits.context import (
    DEFAULT_GEO_HEADERS,
    ContextLimits,
    RequestFacts,
    derive_context,
)
from bandits.errors import InvalidFeature
from bandits.features import shared_line

NOW = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)  # a Wednesday

UA = {
    "iphone_safari": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "iphone_chrome": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/126.0.6478.153 Mobile/15E148 Safari/604.1",
    "ipad": "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "android_phone_chrome": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.6478.122 Mobile Safari/537.36",
    "android_reduced_phone": "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36",
    "android_tablet": "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.6478.122 Safari/537.36",
    "android_reduced_tablet": "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "kindle_silk": "Mozilla/5.0 (Linux; Android 9; KFTRWI) AppleWebKit/537.36 (KHTML, like Gecko) Silk/126.3.1 like Chrome/126.0.6478.126 Safari/537.36",
    "firefox_android_tablet": "Mozilla/5.0 (Android 14; Tablet; rv:127.0) Gecko/127.0 Firefox/127.0",
    "windows_chrome": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "mac_safari": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "linux_firefox": "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "ubuntu_firefox": "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "chromeos": "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "edge": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 Edg/126.0.2592.87",
    "opera": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 OPR/111.0.0.0",
    "samsung_internet": "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36",
    "facebook_in_app": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/470.0.0.44.108;]",
    "googlebot": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "googlebot_smartphone": "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.6478.126 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "gptbot": "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
    "headless_chrome": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/126.0.0.0 Safari/537.36",
    "curl": "curl/8.5.0",
    "python_requests": "python-requests/2.32.3",
    "cubot_phone": "Mozilla/5.0 (Linux; Android 10; CUBOT X30) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36",
    "samsung_smart_tv": "Mozilla/5.0 (SMART-TV; Linux; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/4.0 Chrome/76.0.3809.146 TV Safari/537.36",
    "empty": "",
}

DEVICE_TABLE = [
    ("iphone_safari", "mobile", "ios", "safari"),
    ("iphone_chrome", "mobile", "ios", "chrome"),
    ("ipad", "tablet", "ios", "safari"),
    ("android_phone_chrome", "mobile", "android", "chrome"),
    ("android_reduced_phone", "mobile", "android", "chrome"),
    ("android_tablet", "tablet", "android", "chrome"),
    ("android_reduced_tablet", "tablet", "android", "chrome"),
    ("kindle_silk", "tablet", "android", "other"),
    ("firefox_android_tablet", "tablet", "android", "firefox"),
    ("windows_chrome", "desktop", "windows", "chrome"),
    ("mac_safari", "desktop", "macos", "safari"),
    ("linux_firefox", "desktop", "linux", "firefox"),
    ("ubuntu_firefox", "desktop", "linux", "firefox"),
    ("chromeos", "desktop", "chromeos", "chrome"),
    ("edge", "desktop", "windows", "edge"),
    ("opera", "desktop", "windows", "opera"),
    ("samsung_internet", "mobile", "android", "samsung"),
    ("facebook_in_app", "mobile", "ios", "other"),
    ("googlebot", "bot", "unknown", "other"),
    ("googlebot_smartphone", "bot", "android", "other"),
    ("gptbot", "bot", "unknown", "other"),
    ("headless_chrome", "bot", "linux", "chrome"),
    ("curl", "bot", "unknown", "other"),
    ("python_requests", "bot", "unknown", "other"),
    ("cubot_phone", "mobile", "android", "chrome"),  # "bot" inside a brand is no bot
    ("samsung_smart_tv", "unknown", "other", "samsung"),
    ("empty", "unknown", "unknown", "unknown"),
]


def context(**kwargs: Any) -> dict[str, dict[str, str | float | bool]]:
    options = {
        k: kwargs.pop(k)
        for k in ("now", "default_timezone", "geo_header_names", "limits")
        if k in kwargs
    }
    options.setdefault("now", NOW)
    return derive_context(RequestFacts(**kwargs), **options)


# ---------------------------------------------------------------- device


@pytest.mark.parametrize(
    ("name", "kind", "os", "browser"), DEVICE_TABLE, ids=[r[0] for r in DEVICE_TABLE]
)
def test_device_from_real_user_agents(name: str, kind: str, os: str, browser: str) -> None:
    assert context(user_agent=UA[name])["device"] == {"type": kind, "os": os, "browser": browser}


def test_missing_user_agent_is_unknown() -> None:
    assert context()["device"] == {"type": "unknown", "os": "unknown", "browser": "unknown"}


def test_over_long_user_agent_is_truncated_not_rejected() -> None:
    device = context(user_agent=UA["iphone_safari"] + " x" * 10_000)["device"]
    assert device == {"type": "mobile", "os": "ios", "browser": "safari"}


@pytest.mark.parametrize(
    ("ua", "hints", "expected"),
    [
        # reduced desktop-looking UA, but the browser says it is a mobile on Android
        (
            "linux_firefox",
            {"sec-ch-ua-mobile": "?1", "sec-ch-ua-platform": '"Android"'},
            {"type": "mobile", "os": "android", "browser": "firefox"},
        ),
        # no UA at all: hints alone
        (
            "empty",
            {
                "sec-ch-ua-mobile": "?0",
                "sec-ch-ua-platform": '"Windows"',
                "sec-ch-ua": '"Chromium";v="126", "Microsoft Edge";v="126", "Not-A.Brand";v="8"',
            },
            {"type": "unknown", "os": "windows", "browser": "edge"},
        ),
        # ?0 contradicts a derived mobile: an Android that is not a phone is a tablet
        (
            "android_reduced_phone",
            {"sec-ch-ua-mobile": "?0", "sec-ch-ua-platform": '"Android"'},
            {"type": "tablet", "os": "android", "browser": "chrome"},
        ),
        (
            "windows_chrome",
            {
                "sec-ch-ua-platform": '"macOS"',
                "sec-ch-ua": '"Google Chrome";v="126", "Chromium";v="126"',
            },
            {"type": "desktop", "os": "macos", "browser": "chrome"},
        ),
        (
            "windows_chrome",
            {
                "sec-ch-ua-platform": '"Chrome OS"',
                "sec-ch-ua": '"Opera";v="111", "Chromium";v="125"',
            },
            {"type": "desktop", "os": "chromeos", "browser": "opera"},
        ),
        # hints never turn a bot into a person
        (
            "googlebot",
            {"sec-ch-ua-mobile": "?1"},
            {"type": "bot", "os": "unknown", "browser": "other"},
        ),
        # "Unknown" platform and malformed or over-long hints are ignored
        (
            "android_phone_chrome",
            {
                "sec-ch-ua-platform": '"Unknown"',
                "sec-ch-ua-mobile": "yes",
                "sec-ch-ua": '"Microsoft Edge";v="1", ' * 100,
            },
            {"type": "mobile", "os": "android", "browser": "chrome"},
        ),
        (
            "android_phone_chrome",
            {"sec-ch-ua-platform": "Windows"},  # not an sf-string
            {"type": "mobile", "os": "android", "browser": "chrome"},
        ),
    ],
)
def test_client_hints_refine_the_user_agent(
    ua: str, hints: dict[str, str], expected: dict[str, str]
) -> None:
    assert context(user_agent=UA[ua], client_hints=hints)["device"] == expected


def test_explicit_device_fields_override_each_derived_value() -> None:
    hints = {"sec-ch-ua-mobile": "?1"}
    derived = context(user_agent=UA["windows_chrome"], client_hints=hints)["device"]
    assert derived == {"type": "mobile", "os": "windows", "browser": "chrome"}
    only_type = context(
        user_agent=UA["windows_chrome"], client_hints=hints, device={"type": " Tablet "}
    )
    assert only_type["device"] == {"type": "tablet", "os": "windows", "browser": "chrome"}
    all_three = context(
        user_agent=UA["windows_chrome"],
        device={"type": "desktop", "os": "Mac OS X", "browser": "Samsung Internet"},
    )
    assert all_three["device"] == {"type": "desktop", "os": "macos", "browser": "samsung"}
    # an unrecognised explicit family is kept, normalised
    assert context(device={"os": "  Harmony   OS ", "browser": "Brave"})["device"] == {
        "type": "unknown",
        "os": "harmony os",
        "browser": "brave",
    }
    # None and blank mean "not given"
    assert context(user_agent=UA["ipad"], device={"type": None, "os": " "})["device"] == {
        "type": "tablet",
        "os": "ios",
        "browser": "safari",
    }


# ---------------------------------------------------------------- time


@pytest.mark.parametrize(
    ("timestamp", "zone", "hour", "daypart", "weekday", "weekend"),
    [
        # 2026-11-23 is a Monday; 23:30 UTC is already Tuesday 00:30 in Berlin (CET, +1)
        (datetime(2026, 11, 23, 23, 30, tzinfo=UTC), "Europe/Berlin", "00", "night", "tue", False),
        (datetime(2026, 11, 23, 23, 30, tzinfo=UTC), "UTC", "23", "evening", "mon", False),
        # ... and still Monday 18:30 in New York (EST, -5)
        (
            datetime(2026, 11, 23, 23, 30, tzinfo=UTC),
            "America/New_York",
            "18",
            "evening",
            "mon",
            False,
        ),
        # day-part boundaries, local time: 05:59 night, 06:00 morning, 11:59, 12:00, 17:59, 18:00
        (datetime(2026, 11, 23, 4, 59, tzinfo=UTC), "Europe/Berlin", "05", "night", "mon", False),
        (datetime(2026, 11, 23, 5, 0, tzinfo=UTC), "Europe/Berlin", "06", "morning", "mon", False),
        (
            datetime(2026, 11, 23, 10, 59, tzinfo=UTC),
            "Europe/Berlin",
            "11",
            "morning",
            "mon",
            False,
        ),
        (
            datetime(2026, 11, 23, 11, 0, tzinfo=UTC),
            "Europe/Berlin",
            "12",
            "afternoon",
            "mon",
            False,
        ),
        (
            datetime(2026, 11, 23, 16, 59, tzinfo=UTC),
            "Europe/Berlin",
            "17",
            "afternoon",
            "mon",
            False,
        ),
        (datetime(2026, 11, 23, 17, 0, tzinfo=UTC), "Europe/Berlin", "18", "evening", "mon", False),
        (datetime(2026, 11, 27, 22, 0, tzinfo=UTC), "UTC", "22", "evening", "fri", False),
        # Friday 23:00 UTC is Saturday 08:00 in Tokyo (+9): the weekend starts by local time
        (datetime(2026, 11, 27, 23, 0, tzinfo=UTC), "Asia/Tokyo", "08", "morning", "sat", True),
        (datetime(2026, 11, 29, 14, 59, tzinfo=UTC), "Asia/Tokyo", "23", "evening", "sun", True),
        (datetime(2026, 11, 29, 15, 0, tzinfo=UTC), "Asia/Tokyo", "00", "night", "mon", False),
        # half-hour zone: India is +5:30
        (datetime(2026, 11, 23, 0, 29, tzinfo=UTC), "Asia/Kolkata", "05", "night", "mon", False),
        (datetime(2026, 11, 23, 0, 30, tzinfo=UTC), "Asia/Kolkata", "06", "morning", "mon", False),
        # an aware timestamp in another offset is converted, not reinterpreted
        (
            datetime(2026, 11, 23, 9, 0, tzinfo=timezone(timedelta(hours=-8))),
            "Europe/London",
            "17",
            "afternoon",
            "mon",
            False,
        ),
        # a naive timestamp is UTC
        (datetime(2026, 11, 23, 23, 30), "Europe/Berlin", "00", "night", "tue", False),
        # case-insensitive zone key
        (datetime(2026, 11, 23, 23, 30, tzinfo=UTC), "europe/berlin", "00", "night", "tue", False),
    ],
)
def test_local_time_features(
    timestamp: datetime, zone: str, hour: str, daypart: str, weekday: str, weekend: bool
) -> None:
    time = context(timestamp=timestamp, timezone=zone)["time"]
    assert (time["hour"], time["daypart"], time["weekday"], time["weekend"]) == (
        hour,
        daypart,
        weekday,
        weekend,
    )


@pytest.mark.parametrize(
    ("utc", "zone", "hour"),
    [
        # Europe/Berlin springs forward at 01:00 UTC on 2026-03-29: 02:00 CET -> 03:00 CEST
        (datetime(2026, 3, 29, 0, 30, tzinfo=UTC), "Europe/Berlin", "01"),
        (datetime(2026, 3, 29, 1, 30, tzinfo=UTC), "Europe/Berlin", "03"),
        # ... and falls back at 01:00 UTC on 2026-10-25: local 02:30 happens twice
        (datetime(2026, 10, 25, 0, 30, tzinfo=UTC), "Europe/Berlin", "02"),
        (datetime(2026, 10, 25, 1, 30, tzinfo=UTC), "Europe/Berlin", "02"),
        (datetime(2026, 10, 25, 2, 30, tzinfo=UTC), "Europe/Berlin", "03"),
        # New York springs forward at 07:00 UTC on 2026-03-08 (02:00 EST -> 03:00 EDT)
        (datetime(2026, 3, 8, 6, 59, tzinfo=UTC), "America/New_York", "01"),
        (datetime(2026, 3, 8, 7, 0, tzinfo=UTC), "America/New_York", "03"),
        # southern hemisphere: Sydney is +11 (AEDT) in January, +10 (AEST) in July
        (datetime(2026, 1, 15, 0, 0, tzinfo=UTC), "Australia/Sydney", "11"),
        (datetime(2026, 7, 15, 0, 0, tzinfo=UTC), "Australia/Sydney", "10"),
    ],
)
def test_daylight_saving_time(utc: datetime, zone: str, hour: str) -> None:
    assert context(timestamp=utc, timezone=zone)["time"]["hour"] == hour


def test_time_zone_and_timestamp_fallbacks() -> None:
    # no timestamp: `now`; no request zone: the slot default
    time = context(
        now=datetime(2026, 11, 23, 23, 30, tzinfo=UTC), default_timezone="Europe/Berlin"
    )["time"]
    assert (time["hour"], time["weekday"]) == ("00", "tue")
    # a request zone beats the slot default
    time = context(
        timezone="UTC",
        now=datetime(2026, 11, 23, 23, 30, tzinfo=UTC),
        default_timezone="Europe/Berlin",
    )["time"]
    assert (time["hour"], time["weekday"]) == ("23", "mon")
    # the request timestamp beats `now`
    time = context(timestamp=datetime(2026, 11, 24, 7, 0, tzinfo=UTC), now=NOW)["time"]
    assert (time["hour"], time["weekday"]) == ("07", "tue")


@pytest.mark.parametrize(
    ("hour", "sin", "cos"),
    [(0, 0.0, 1.0), (6, 1.0, 0.0), (9, 0.707107, -0.707107), (12, 0.0, -1.0), (18, -1.0, 0.0)],
)
def test_cyclical_hour(hour: int, sin: float, cos: float) -> None:
    time = context(timestamp=datetime(2026, 11, 23, hour, 0, tzinfo=UTC))["time"]
    assert time["hour_sin"] == sin and time["hour_cos"] == cos
    assert time["hour"] == f"{hour:02d}"
    assert json.dumps(time["hour_sin"]) != "-0.0"


# ---------------------------------------------------------------- location


def test_explicit_country_beats_geo_headers_beats_ip() -> None:
    headers = {"cf-ipcountry": "FR", "cloudfront-viewer-country": "DE"}
    assert context(location={"country": " jp "}, geo_headers=headers, ip="8.8.8.8")["location"] == {
        "country": "JP"
    }
    assert context(geo_headers=headers, ip="8.8.8.8")["location"] == {"country": "FR"}
    # the order of geo_header_names is the precedence
    reordered = ("cloudfront-viewer-country", "cf-ipcountry")
    assert context(geo_headers=headers, ip="8.8.8.8", geo_header_names=reordered)["location"] == {
        "country": "DE"
    }
    assert context(ip="8.8.8.8")["location"] == {"country": "US"}
    assert context()["location"] == {"country": "unknown"}


def test_placeholder_geo_values_fall_through() -> None:
    # Cloudflare: XX = unknown, T1 = Tor; then the next header, then the IP
    assert context(geo_headers={"cf-ipcountry": "T1", "x-vercel-ip-country": "ca"})["location"] == {
        "country": "CA"
    }
    assert context(geo_headers={"cf-ipcountry": "XX"}, ip="1.0.16.1")["location"] == {
        "country": "JP"
    }
    assert context(geo_headers={"cf-ipcountry": "not a code"}, ip="8.8.8.8")["location"] == {
        "country": "US"
    }
    # an explicit "XX" is the caller's "I don't know"
    assert context(location={"country": "xx"}, ip="8.8.8.8")["location"] == {"country": "US"}


def test_geo_headers_are_read_only_when_configured() -> None:
    headers = {"cf-ipcountry": "FR"}
    assert context(geo_headers=headers, geo_header_names=())["location"] == {"country": "unknown"}
    assert context(
        geo_headers={"x-fastly-country-code": "SE"}, geo_header_names=("x-fastly-country-code",)
    )["location"] == {"country": "SE"}
    assert "cf-ipcountry" in DEFAULT_GEO_HEADERS


@pytest.mark.parametrize(
    ("ip", "country"),
    [
        ("8.8.8.8", "US"),
        ("1.0.16.1", "JP"),
        ("2001:4860:4860::8888", "US"),
        ("::ffff:8.8.8.8", "US"),  # IPv4-mapped IPv6
        (" 8.8.8.8 ", "US"),
        ("127.0.0.1", "unknown"),
        ("10.0.0.1", "unknown"),
        ("192.168.1.1", "unknown"),
        ("::1", "unknown"),
        ("fe80::1", "unknown"),
        ("169.254.1.1", "unknown"),  # link-local
        ("100.64.0.1", "unknown"),  # carrier-grade NAT
        ("203.0.113.77", "unknown"),  # documentation range
        ("2001:db8::1", "unknown"),
        ("fc00::1", "unknown"),
        ("::ffff:10.0.0.1", "unknown"),
        ("not-an-ip", "unknown"),
        ("8.8.8.8, 10.0.0.1", "unknown"),  # api must pick one forwarded address
    ],
)
def test_offline_ip_lookup(ip: str, country: str) -> None:
    assert context(ip=ip)["location"] == {"country": country}


def test_region_and_city_only_when_explicit() -> None:
    location = context(
        location={"country": "de", "region": " Bavaria ", "city": "MÜNCHEN"},
        geo_headers={"cloudfront-viewer-country-region": "BY"},
        ip="8.8.8.8",
    )["location"]
    assert location == {"country": "DE", "region": "bavaria", "city": "münchen"}
    # a city without a country still gets the derived country
    assert context(location={"city": "Lyon"}, geo_headers={"cf-ipcountry": "FR"})["location"] == {
        "country": "FR",
        "city": "lyon",
    }


@pytest.mark.parametrize(
    "ip", ["8.8.8.8", "2001:4860:4860::8888", "1.0.16.1", "10.0.0.1", "203.0.113.77"]
)
def test_the_ip_never_appears_in_the_output(ip: str) -> None:
    features = context(
        ip=ip, user_agent=UA["android_phone_chrome"], timestamp=NOW, user={"plan": "pro"}
    )
    text = json.dumps(features) + shared_line(features)
    assert ip not in text
    assert ip.replace(".", "%2E") not in text and ip.replace(":", "%3A") not in text
    flat = [str(v) for values in features.values() for kv in values.items() for v in kv]
    assert not any(ip in item for item in flat)


# ---------------------------------------------------------------- user, whole output


def test_user_features_are_validated_and_kept() -> None:
    user = context(user={"plan": "pro", "visits": 3, "returning": True})["user"]
    assert user == {"plan": "pro", "visits": 3.0, "returning": True}
    assert context()["user"] == {}


def test_output_shape_and_shared_line() -> None:
    features = context(
        timestamp=datetime(2026, 11, 23, 23, 30, tzinfo=UTC),
        timezone="Europe/Berlin",
        user_agent=UA["iphone_safari"],
        location={"country": "DE"},
        user={"plan": "pro"},
    )
    assert list(features) == ["time", "device", "location", "user"]
    assert features["time"] == {
        "hour": "00",
        "hour_sin": 0.0,
        "hour_cos": 1.0,
        "daypart": "night",
        "weekday": "tue",
        "weekend": False,
    }
    assert shared_line(features) == (
        "shared |T daypart=night hour=00 hour_cos:1.0 hour_sin:0.0 weekday=tue weekend=false"
        " |D browser=safari os=ios type=mobile |L country=DE |U plan=pro"
    )


def test_deterministic_and_independent_of_the_cache() -> None:
    facts = RequestFacts(
        timestamp=datetime(2026, 3, 29, 1, 30, tzinfo=UTC),
        timezone="Europe/Berlin",
        user_agent=UA["samsung_internet"],
        client_hints={"sec-ch-ua-mobile": "?1", "sec-ch-ua-platform": '"Android"'},
        geo_headers={"cf-ipcountry": "XX"},
        ip="1.0.16.1",
        user={"segment": "b", "score": 0.25},
    )
    first = derive_context(facts, now=NOW)
    from bandits import context as module

    module._device_from_user_agent.cache_clear()
    second = derive_context(facts, now=NOW)
    third = derive_context(facts, now=NOW)
    assert first == second == third
    assert json.dumps(first, sort_keys=True) == json.dumps(third, sort_keys=True)
    # the cache is bounded and keyed by the User-Agent string
    info = module._device_from_user_agent.cache_info()
    assert info.maxsize is not None and info.hits == 1 and info.misses == 1
    # no shared mutable state leaks between calls
    first["device"]["type"] = "changed"
    assert derive_context(facts, now=NOW)["device"]["type"] == "mobile"


# ---------------------------------------------------------------- invalid inputs

LIMITS = ContextLimits(max_user_features=2, max_name_length=8, max_value_length=16)

INVALID = [
    (RequestFacts(timezone="Mars/Olympus_Mons"), "context.time.timezone"),
    (RequestFacts(timezone=""), "context.time.timezone"),
    (RequestFacts(timezone="../../etc/passwd"), "context.time.timezone"),
    (RequestFacts(timezone="localtime"), "context.time.timezone"),  # host-dependent
    (RequestFacts(timezone="x" * 100), "context.time.timezone"),
    (RequestFacts(timezone=5), "context.time.timezone"),  # type: ignore[arg-type]
    (RequestFacts(timestamp="2026-11-23T23:30Z"), "context.time.timestamp"),  # type: ignore[arg-type]
    (RequestFacts(device={"type": "phone"}), "context.device.type"),
    (RequestFacts(device={"type": 1}), "context.device.type"),
    (RequestFacts(device={"type": "x" * 100}), "context.device.type"),
    (RequestFacts(device={"os": ["ios"]}), "context.device.os"),
    (RequestFacts(device={"os": "x" * 17}), "context.device.os"),
    (RequestFacts(device={"browser": True}), "context.device.browser"),
    (RequestFacts(device={"model": "iPhone 15"}), "context.device.model"),
    (RequestFacts(device=["mobile"]), "context.device"),  # type: ignore[arg-type]
    (RequestFacts(location={"country": "USA"}), "context.location.country"),
    (RequestFacts(location={"country": "1A"}), "context.location.country"),
    (RequestFacts(location={"country": ""}), "context.location.country"),
    (RequestFacts(location={"country": 49}), "context.location.country"),
    (RequestFacts(location={"region": "x" * 17}), "context.location.region"),
    (RequestFacts(location={"city": 7}), "context.location.city"),
    (RequestFacts(location={"lat": 48.1}), "context.location.lat"),
    (RequestFacts(location="DE"), "context.location"),  # type: ignore[arg-type]
    (RequestFacts(user={"a": 1, "b": 2, "c": 3}), "context.user"),
    (RequestFacts(user={"long_name_x": 1}), "context.user.long_name_x"),
    (RequestFacts(user={"plan": "x" * 17}), "context.user.plan"),
    (RequestFacts(user={"score": float("nan")}), "context.user.score"),
    (RequestFacts(user={"tags": ["a"]}), "context.user.tags"),
    (RequestFacts(user="pro"), "context.user"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(
    ("facts", "field"), INVALID, ids=[f"{i}-{row[1]}" for i, row in enumerate(INVALID)]
)
def test_invalid_inputs_name_the_request_field(facts: RequestFacts, field: str) -> None:
    with pytest.raises(InvalidFeature) as caught:
        derive_context(facts, now=NOW, limits=LIMITS)
    assert caught.value.field == field


def test_invalid_slot_default_zone_names_the_setting() -> None:
    with pytest.raises(InvalidFeature) as caught:
        derive_context(RequestFacts(), now=NOW, default_timezone="Nowhere/Special")
    assert caught.value.field == "default_timezone"
    # ... but a valid request zone does not need the default
    assert (
        derive_context(RequestFacts(timezone="UTC"), now=NOW, default_timezone="Nowhere/Special")[
            "time"
        ]["hour"]
        == "12"
    )


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_user_features"):
        ContextLimits(max_user_features=0)
