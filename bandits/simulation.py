"""A simulated audience with ground truth: visitors, blocks, clicks and exact regret.

A :class:`World` is a seeded synthetic site. It produces :class:`Visitor`\\ s in
time order (a non-homogeneous Poisson arrival process whose rate follows each
country's local diurnal and weekly traffic curve), knows the click probability
of every :class:`Block` for every visitor, and therefore the optimal block and
the exact per-event regret of any policy. It is pure (numpy and the standard
library): the ``slotbandit simulate`` command drives a running server with it
over HTTP (``Visitor.request_body()`` / ``Visitor.headers()``), tests and
benchmarks run it in-process with :func:`run_policy`.

Visitors
    time (UTC timestamp + IANA zone; local hour, day part, weekday, weekend),
    device (type, OS and browser families consistent with the type, and a
    matching User-Agent string), location (country), user (``returning``,
    ``segment``). Mixes are configured in :class:`Population`.

Click model
    ``p(click | visitor, block) = p_min + (p_max - p_min) * sigmoid(s)`` with
    ``s = rules(context, block) + noise(context, block) + drift_t(context, block)``:

    * ``rules`` are hand-written context x block effects in logit units (see
      :func:`_rule_logit`): short news on mobile mornings, video on desktop
      evenings, regional offers in their own country (and useless elsewhere),
      sports on weekends, the user's segment matching the category, long
      formats for returning visitors and on desktop, ...  Several are three-way
      (device x day part x format), so a model with pairwise context x action
      interactions is misspecified, as a real one would be.
    * ``noise`` is a seeded random effect ``N(0, noise^2)`` per (block, context
      value) for device type, OS, day part, weekday, country and segment:
      heterogeneity nobody wrote down.
    * ``drift_t = drift_scale * ((cos θ_t - 1) B + sin θ_t C)`` with
      ``θ_t = drift * t / 10_000`` (``t`` the event index) and ``B``, ``C``
      further seeded random effect tables (each visitor's sum of them has
      sd 1): preferences rotate away from the starting world at ``drift``
      radians per 10,000 events (0: stationary); the shift has sd
      ``drift_scale * sqrt(2 - 2 cos θ_t)`` logits.

Rewards
    a click (0/1) with a delay (log-normal, median 6 s); after a click a dwell
    time (log-normal, median by format) and, for offers, a conversion value
    with its own delay. Expected rewards and regret are for clicks.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import time as _time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from bandits.context import RequestFacts, derive_context
from bandits.features import Features
from bandits.policies import Candidate, Chooser, cost_from_reward
from bandits.sampling import normalize_pmf, sample_index

__all__ = [
    "DEFAULT_CATALOG",
    "Block",
    "DeviceProfile",
    "Location",
    "Outcome",
    "Population",
    "SimulationResult",
    "Visitor",
    "WindowSummary",
    "World",
    "daypart",
    "run_policy",
]

WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def daypart(hour: int) -> str:
    """Day part of a local hour: night 0-5, morning 6-11, afternoon 12-17, evening 18-23."""
    return ("night", "morning", "afternoon", "evening")[hour // 6]


# --------------------------------------------------------------------------- population


@dataclass(frozen=True)
class Location:
    """A country (ISO 3166-1 alpha-2), one of its IANA time zones, and its share of traffic."""

    country: str
    timezone: str
    share: float
    language: str = "en-US"
    """Accept-Language sent by its visitors."""


@dataclass(frozen=True)
class DeviceProfile:
    """A device type with OS and browser families, its share of traffic and its User-Agent."""

    type: str
    os: str
    browser: str
    share: float
    user_agent: str


# Hourly traffic by local hour (relative; normalised to mean 1). Shape of typical
# web traffic: trough at 3-4 h, morning ramp, lunch plateau, evening peak 20-21 h.
HOURLY_TRAFFIC: tuple[float, ...] = (
    0.40, 0.25, 0.17, 0.13, 0.13, 0.20, 0.38, 0.68, 0.92, 1.00, 1.04, 1.10,
    1.16, 1.10, 1.04, 1.04, 1.08, 1.18, 1.32, 1.48, 1.60, 1.56, 1.22, 0.78,
)
# Traffic by local weekday mon..sun (relative; normalised to mean 1).
WEEKDAY_TRAFFIC: tuple[float, ...] = (1.04, 1.05, 1.05, 1.04, 1.00, 0.90, 0.92)

DEFAULT_LOCATIONS: tuple[Location, ...] = (
    Location("US", "America/New_York", 0.14, "en-US"),
    Location("US", "America/Chicago", 0.08, "en-US"),
    Location("US", "America/Los_Angeles", 0.08, "en-US"),
    Location("GB", "Europe/London", 0.10, "en-GB"),
    Location("DE", "Europe/Berlin", 0.09, "de-DE"),
    Location("FR", "Europe/Paris", 0.07, "fr-FR"),
    Location("IN", "Asia/Kolkata", 0.12, "en-IN"),
    Location("BR", "America/Sao_Paulo", 0.07, "pt-BR"),
    Location("JP", "Asia/Tokyo", 0.06, "ja-JP"),
    Location("CA", "America/Toronto", 0.04, "en-CA"),
    Location("AU", "Australia/Sydney", 0.03, "en-AU"),
    Location("ES", "Europe/Madrid", 0.03, "es-ES"),
    Location("MX", "America/Mexico_City", 0.03, "es-MX"),
    Location("NG", "Africa/Lagos", 0.02, "en-NG"),
    Location("IT", "Europe/Rome", 0.02, "it-IT"),
    Location("NL", "Europe/Amsterdam", 0.02, "nl-NL"),
)

_IOS_MOBILE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)"
_IOS_TABLET = "Mozilla/5.0 (iPad; CPU OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)"
_WIN = "Mozilla/5.0 (Windows NT 10.0; Win64; x64)"
_MAC = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)"
_CHROME = "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0"

# Joint (type, os, browser) mix: device type shares mobile 0.60 / desktop 0.33 /
# tablet 0.07, OS and browser families within each type as in public 2024
# market-share statistics, rounded.
DEFAULT_DEVICES: tuple[DeviceProfile, ...] = (
    DeviceProfile("mobile", "ios", "safari", 0.60 * 0.47 * 0.86,
                  f"{_IOS_MOBILE} Version/17.4.1 Mobile/15E148 Safari/604.1"),
    DeviceProfile("mobile", "ios", "chrome", 0.60 * 0.47 * 0.14,
                  f"{_IOS_MOBILE} CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1"),
    DeviceProfile("mobile", "android", "chrome", 0.60 * 0.53 * 0.78,
                  f"Mozilla/5.0 (Linux; Android 10; K) {_CHROME} Mobile Safari/537.36"),
    DeviceProfile("mobile", "android", "samsung", 0.60 * 0.53 * 0.17,
                  "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 "
                  "(KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36"),
    DeviceProfile("mobile", "android", "firefox", 0.60 * 0.53 * 0.05,
                  "Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0"),
    DeviceProfile("tablet", "ios", "safari", 0.07 * 0.62 * 0.90,
                  f"{_IOS_TABLET} Version/17.4.1 Mobile/15E148 Safari/604.1"),
    DeviceProfile("tablet", "ios", "chrome", 0.07 * 0.62 * 0.10,
                  f"{_IOS_TABLET} CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1"),
    DeviceProfile("tablet", "android", "chrome", 0.07 * 0.38 * 0.80,
                  f"Mozilla/5.0 (Linux; Android 13; SM-X700) {_CHROME} Safari/537.36"),
    DeviceProfile("tablet", "android", "samsung", 0.07 * 0.38 * 0.20,
                  "Mozilla/5.0 (Linux; Android 13; SAMSUNG SM-X700) AppleWebKit/537.36 "
                  "(KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Safari/537.36"),
    DeviceProfile("desktop", "windows", "chrome", 0.33 * 0.68 * 0.66,
                  f"{_WIN} {_CHROME} Safari/537.36"),
    DeviceProfile("desktop", "windows", "edge", 0.33 * 0.68 * 0.24,
                  f"{_WIN} {_CHROME} Safari/537.36 Edg/124.0.2478.80"),
    DeviceProfile("desktop", "windows", "firefox", 0.33 * 0.68 * 0.10,
                  "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0"),
    DeviceProfile("desktop", "macos", "safari", 0.33 * 0.26 * 0.45,
                  f"{_MAC} AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Safari/605.1.15"),
    DeviceProfile("desktop", "macos", "chrome", 0.33 * 0.26 * 0.48,
                  f"{_MAC} {_CHROME} Safari/537.36"),
    DeviceProfile("desktop", "macos", "firefox", 0.33 * 0.26 * 0.07,
                  "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:125.0) Gecko/20100101 Firefox/125.0"),
    DeviceProfile("desktop", "linux", "chrome", 0.33 * 0.06 * 0.60,
                  f"Mozilla/5.0 (X11; Linux x86_64) {_CHROME} Safari/537.36"),
    DeviceProfile("desktop", "linux", "firefox", 0.33 * 0.06 * 0.40,
                  "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"),
)

DEFAULT_SEGMENTS: tuple[tuple[str, float], ...] = (
    ("news", 0.30), ("sports", 0.20), ("entertainment", 0.20), ("tech", 0.15), ("lifestyle", 0.15),
)


def _check_shares(name: str, shares: Sequence[float]) -> None:
    if not shares or any(not math.isfinite(s) or s < 0 for s in shares):
        raise ValueError(f"{name} shares must be finite and non-negative")
    if abs(math.fsum(shares) - 1.0) > 1e-6:
        raise ValueError(f"{name} shares must sum to 1, not {math.fsum(shares)!r}")


@dataclass(frozen=True)
class Population:
    """Who visits: the traffic mixes a :class:`World` draws visitors from."""

    locations: tuple[Location, ...] = DEFAULT_LOCATIONS
    """Countries with time zones; shares sum to 1 (a country may have several zones)."""
    devices: tuple[DeviceProfile, ...] = DEFAULT_DEVICES
    """Joint (device type, OS, browser) mix; shares sum to 1."""
    segments: tuple[tuple[str, float], ...] = DEFAULT_SEGMENTS
    """User interest segment mix; shares sum to 1."""
    returning_share: float = 0.35
    """Share of returning visitors."""
    hourly_traffic: tuple[float, ...] = HOURLY_TRAFFIC
    """Relative traffic by local hour 0..23 (any positive scale)."""
    weekday_traffic: tuple[float, ...] = WEEKDAY_TRAFFIC
    """Relative traffic by local weekday mon..sun (any positive scale)."""

    def __post_init__(self) -> None:
        _check_shares("location", [loc.share for loc in self.locations])
        _check_shares("device", [d.share for d in self.devices])
        _check_shares("segment", [s for _, s in self.segments])
        if not 0.0 <= self.returning_share <= 1.0:
            raise ValueError("returning_share must be within [0, 1]")
        for name, curve, size in (("hourly_traffic", self.hourly_traffic, 24), ("weekday_traffic", self.weekday_traffic, 7)):
            if len(curve) != size or any(not math.isfinite(v) or v <= 0 for v in curve):
                raise ValueError(f"{name} needs {size} positive numbers")
        for loc in self.locations:
            ZoneInfo(loc.timezone)  # raises for an unknown zone

    def country_shares(self) -> dict[str, float]:
        """Configured share of each country (summed over its time zones)."""
        shares: dict[str, float] = {}
        for loc in self.locations:
            shares[loc.country] = shares.get(loc.country, 0.0) + loc.share
        return shares

    def device_type_shares(self) -> dict[str, float]:
        """Configured share of each device type (summed over OS and browser)."""
        shares: dict[str, float] = {}
        for d in self.devices:
            shares[d.type] = shares.get(d.type, 0.0) + d.share
        return shares


# --------------------------------------------------------------------------- visitors


@dataclass(frozen=True)
class Visitor:
    """One simulated visitor at one moment: what the service would see, plus its index."""

    index: int
    """Position in the stream (drift is a function of it)."""
    timestamp: datetime
    """Arrival time, timezone-aware UTC."""
    timezone: str
    """IANA time zone of the visitor."""
    country: str
    device_type: str
    os: str
    browser: str
    user_agent: str
    language: str
    returning: bool
    segment: str

    @property
    def unit_id(self) -> str:
        """A unit key for experiment assignment (unique per visitor)."""
        return f"sim-{self.index}"

    def local_time(self) -> datetime:
        return self.timestamp.astimezone(ZoneInfo(self.timezone))

    def request_facts(self, *, explicit_device: bool = True) -> RequestFacts:
        """What ``api`` would extract from :meth:`request_body` and :meth:`headers`."""
        headers = self.headers()
        hints = {k.lower(): v for k, v in headers.items() if k.lower().startswith("sec-ch-ua")}
        return RequestFacts(
            timestamp=self.timestamp,
            timezone=self.timezone,
            user_agent=headers["User-Agent"],
            client_hints=hints,
            device={"type": self.device_type, "os": self.os, "browser": self.browser} if explicit_device else {},
            location={"country": self.country},
            user=self.user_features(),
        )

    def context(self) -> dict[str, dict[str, Any]]:
        """The structured context ``bandits.features.shared_line`` takes, as the service derives it.

        It is ``bandits.context.derive_context`` of :meth:`request_facts`: time
        keys hour, hour_sin, hour_cos, daypart, weekday, weekend; device type,
        os, browser; location country; user returning, segment.
        """
        return derive_context(self.request_facts(), now=self.timestamp)

    def user_features(self) -> dict[str, Any]:
        """Caller-supplied user features."""
        return {"returning": self.returning, "segment": self.segment}

    def request_body(self, *, event_id: str | None = None) -> dict[str, Any]:
        """The JSON body of ``POST /v1/slots/{slot}/decide`` with an explicit context."""
        body: dict[str, Any] = {
            "unit_id": self.unit_id,
            "context": {
                "time": {
                    "timestamp": self.timestamp.isoformat(timespec="milliseconds"),
                    "timezone": self.timezone,
                },
                "device": {"type": self.device_type, "os": self.os, "browser": self.browser},
                "location": {"country": self.country},
                "user": self.user_features(),
            },
        }
        if event_id is not None:
            body["event_id"] = event_id
        return body

    def headers(self) -> dict[str, str]:
        """HTTP headers a browser of this kind sends: User-Agent, Accept-Language, client hints."""
        headers = {"User-Agent": self.user_agent, "Accept-Language": f"{self.language},en;q=0.8"}
        if self.browser in ("chrome", "edge", "samsung") and self.os != "ios":
            # Chromium sends low-entropy client hints by default (not on iOS, where it is WebKit).
            platform = {"windows": "Windows", "macos": "macOS", "linux": "Linux", "android": "Android"}[self.os]
            headers["Sec-CH-UA-Mobile"] = "?1" if self.device_type == "mobile" else "?0"
            headers["Sec-CH-UA-Platform"] = f'"{platform}"'
        return headers


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Block:
    """A candidate block: an id plus category, format and region."""

    id: str
    category: str
    format: str
    region: str = "global"
    """An ISO country code for regional offers, else ``global``."""

    @property
    def features(self) -> dict[str, str]:
        return {"category": self.category, "format": self.format, "region": self.region}

    def to_candidate(self) -> Candidate:
        return Candidate(self.id, self.features)


DEFAULT_CATALOG: tuple[Block, ...] = (
    Block("news-brief", "news", "short"),
    Block("news-analysis", "news", "long"),
    Block("news-video", "news", "video"),
    Block("sports-scores", "sports", "short"),
    Block("sports-feature", "sports", "long"),
    Block("sports-highlights", "sports", "video"),
    Block("entertainment-trailer", "entertainment", "video"),
    Block("entertainment-gossip", "entertainment", "short"),
    Block("tech-review", "tech", "long"),
    Block("tech-news", "tech", "short"),
    Block("lifestyle-recipes", "lifestyle", "long"),
    Block("weather", "weather", "short"),
    Block("offer-us", "offer", "short", "US"),
    Block("offer-gb", "offer", "short", "GB"),
    Block("offer-de", "offer", "short", "DE"),
    Block("offer-in", "offer", "short", "IN"),
    Block("offer-global", "offer", "short"),
)

_CATEGORY_BASE: dict[str, float] = {
    "news": -1.6, "sports": -2.0, "entertainment": -1.8, "tech": -2.2,
    "lifestyle": -2.2, "weather": -2.4, "offer": -2.6,
}


@dataclass(frozen=True)
class _Key:
    """The click-relevant part of a visitor's context."""

    hour: int
    weekday: str
    device: str
    os: str
    country: str
    returning: bool
    segment: str

    @property
    def daypart(self) -> str:
        return daypart(self.hour)

    @property
    def weekend(self) -> bool:
        return self.weekday in ("sat", "sun")

    def tokens(self) -> tuple[str, ...]:
        """Context values that carry a random effect."""
        return (
            f"device={self.device}", f"os={self.os}", f"daypart={self.daypart}",
            f"weekday={self.weekday}", f"country={self.country}", f"segment={self.segment}",
        )


def _rule_logit(k: _Key, b: Block) -> float:
    """Hand-written click preferences in logit units (the world's ground truth)."""
    s = _CATEGORY_BASE.get(b.category, -2.2)
    part = k.daypart
    if b.category == k.segment:
        s += 1.0
    if b.format == "video":
        s += {"desktop": 0.6, "tablet": 0.4, "mobile": -0.4}.get(k.device, 0.0)
        s += {"evening": 0.5, "morning": -0.4}.get(part, 0.0)
        if k.device == "desktop" and part == "evening":
            s += 0.5  # video does well on desktop evenings
    elif b.format == "short":
        if k.device == "mobile":
            s += 0.4
            if part == "morning" and b.category == "news":
                s += 0.9  # short news on mobile mornings
    elif b.format == "long":
        s += {"desktop": 0.4, "mobile": -0.3}.get(k.device, 0.0)
        s += 0.4 if k.returning else 0.0
        s += 0.3 if k.weekend else 0.0
    if b.category == "sports":
        s += 0.9 if k.weekend else 0.0
        s += 0.3 if part == "evening" else 0.0
    elif b.category == "news":
        s += {"morning": 0.5, "night": -0.3}.get(part, 0.0)
    elif b.category == "entertainment":
        s += 0.4 if part in ("evening", "night") else 0.0
        s += 0.2 if k.weekend else 0.0
    elif b.category == "tech":
        s += 0.3 if k.device == "desktop" else 0.0
        s += 0.3 if part == "afternoon" and not k.weekend else 0.0
    elif b.category == "lifestyle":
        s += 0.5 if k.weekend else 0.0
    elif b.category == "weather":
        s += 0.8 if part == "morning" else 0.0
    elif b.category == "offer":
        if b.region == k.country:
            s += 1.6  # regional offers in their country
        elif b.region != "global":
            s -= 2.0  # ... and nearly useless elsewhere
        s += 0.3 if k.returning else 0.0
        s += 0.2 if k.os == "ios" else 0.0
    return s


# --------------------------------------------------------------------------- rewards


@dataclass(frozen=True)
class Outcome:
    """What happened after a block was shown. Delays are seconds after the decision."""

    click: int
    click_delay_seconds: float
    """When the click arrives (meaningful only if ``click``)."""
    dwell_seconds: float
    """Time spent after a click; 0 without a click. Reported at click delay + dwell."""
    conversion_value: float
    """Value of a conversion (offers only); 0 when none."""
    conversion_delay_seconds: float
    """When the conversion arrives (meaningful only if ``conversion_value``)."""


_DWELL_MEDIAN = {"short": 20.0, "long": 90.0, "video": 120.0}


# --------------------------------------------------------------------------- world


def _pick(cdf: Sequence[float], u: float) -> int:
    """Inverse-CDF draw from an unnormalised cumulative list at ``u`` in [0, 1)."""
    return min(bisect.bisect_right(cdf, u * cdf[-1]), len(cdf) - 1)


class World:
    """A seeded synthetic audience with known click probabilities.

    ``World(seed)`` fixes the random effect tables; :meth:`visitors` with the
    same arguments yields the same visitors; the same (visitor, block, rng
    state) gives the same :class:`Outcome`.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        drift: float = 0.0,
        drift_scale: float = 1.0,
        noise: float = 0.3,
        click_range: tuple[float, float] = (0.01, 0.35),
        events_per_day: float = 2000.0,
        catalog: Sequence[Block] = DEFAULT_CATALOG,
        population: Population | None = None,
    ) -> None:
        """
        Args:
            seed: fixes the random effects and the visitor stream.
            drift: radians of preference rotation per 10,000 events (0: stationary).
            drift_scale: logit sd of the rotating effects (see the module docstring).
            noise: standard deviation (logit units) of the static random effects.
            click_range: (p_min, p_max) that click probabilities are squeezed into.
            events_per_day: mean arrival rate of visitors.
            catalog: the blocks; ids must be unique.
            population: traffic mixes; default :class:`Population`.
        """
        p_min, p_max = click_range
        if not 0.0 <= p_min < p_max <= 1.0:
            raise ValueError("click_range must satisfy 0 <= p_min < p_max <= 1")
        for name, value in (("drift", drift), ("drift_scale", drift_scale), ("noise", noise)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite non-negative number")
        if not math.isfinite(events_per_day) or events_per_day <= 0:
            raise ValueError("events_per_day must be positive")
        ids = [b.id for b in catalog]
        if not ids or len(set(ids)) != len(ids):
            raise ValueError("catalog needs unique block ids")
        self.seed = seed
        self.drift = drift
        self.drift_scale = drift_scale
        self.noise = noise
        self.click_range = (float(p_min), float(p_max))
        self.events_per_day = events_per_day
        self.catalog: tuple[Block, ...] = tuple(catalog)
        self.population = population or Population()
        self._index = {b.id: i for i, b in enumerate(self.catalog)}
        rng = np.random.default_rng([seed, 0])
        tokens = sorted(self._all_tokens())
        k = len(self.catalog)
        self._noise = {t: rng.normal(0.0, 1.0, k) * noise for t in tokens}
        # Each visitor sums one drift effect per context group (6 of them, see _Key.tokens):
        # per-token sd 1/sqrt(6) makes drift_scale the sd of that sum.
        per_token = 1.0 / math.sqrt(len(_Key(0, "mon", "", "", "", False, "").tokens()))
        self._drift_b = {t: rng.normal(0.0, per_token, k) for t in tokens}
        self._drift_c = {t: rng.normal(0.0, per_token, k) for t in tokens}
        self._static: dict[_Key, np.ndarray] = {}
        self._zones = [ZoneInfo(loc.timezone) for loc in self.population.locations]

    def _all_tokens(self) -> set[str]:
        pop = self.population
        tokens = {f"device={d.type}" for d in pop.devices} | {f"os={d.os}" for d in pop.devices}
        tokens |= {f"daypart={p}" for p in ("night", "morning", "afternoon", "evening")}
        tokens |= {f"weekday={w}" for w in WEEKDAYS}
        tokens |= {f"country={loc.country}" for loc in pop.locations}
        tokens |= {f"segment={s}" for s, _ in pop.segments}
        return tokens

    # ---- click probabilities

    @staticmethod
    def _key(visitor: Visitor) -> _Key:
        local = visitor.local_time()
        return _Key(local.hour, WEEKDAYS[local.weekday()], visitor.device_type, visitor.os,
                    visitor.country, visitor.returning, visitor.segment)

    def _catalog_probabilities(self, visitor: Visitor) -> np.ndarray:
        key = self._key(visitor)
        static = self._static.get(key)
        if static is None:
            static = np.array([_rule_logit(key, b) for b in self.catalog])
            for token in key.tokens():
                static = static + self._noise.get(token, 0.0)
            if len(self._static) > 200_000:
                self._static.clear()
            self._static[key] = static
        logit = static
        if self.drift > 0 and self.drift_scale > 0:
            theta = self.drift * visitor.index / 10_000.0
            b = sum((self._drift_b[t] for t in key.tokens() if t in self._drift_b), np.zeros(len(self.catalog)))
            c = sum((self._drift_c[t] for t in key.tokens() if t in self._drift_c), np.zeros(len(self.catalog)))
            logit = logit + self.drift_scale * ((math.cos(theta) - 1.0) * b + math.sin(theta) * c)
        p_min, p_max = self.click_range
        return p_min + (p_max - p_min) / (1.0 + np.exp(-logit))

    def _indices(self, blocks: Sequence[Block] | None) -> np.ndarray:
        if blocks is None:
            return np.arange(len(self.catalog))
        try:
            return np.array([self._index[b.id] for b in blocks], dtype=np.int64)
        except KeyError as error:
            raise ValueError(f"block {error.args[0]!r} is not in this world's catalog") from None

    def expected_rewards(self, visitor: Visitor, blocks: Sequence[Block] | None = None) -> np.ndarray:
        """Click probability of each block (default: the whole catalog) for this visitor."""
        probabilities: np.ndarray = self._catalog_probabilities(visitor)[self._indices(blocks)]
        return probabilities

    def optimal(self, visitor: Visitor, blocks: Sequence[Block] | None = None) -> Block:
        """The block with the highest click probability (first one on ties)."""
        offered = self.catalog if blocks is None else tuple(blocks)
        return offered[int(np.argmax(self.expected_rewards(visitor, offered)))]

    def reward(self, visitor: Visitor, block: Block, rng: np.random.Generator) -> Outcome:
        """Draw what happens when ``block`` is shown to ``visitor``."""
        p = float(self.expected_rewards(visitor, [block])[0])
        click = int(rng.random() < p)
        if not click:
            return Outcome(0, 0.0, 0.0, 0.0, 0.0)
        # Log-normal delays and dwell: heavy right tails, as in web analytics logs.
        delay = float(rng.lognormal(math.log(6.0), 1.0))
        dwell = float(rng.lognormal(math.log(_DWELL_MEDIAN.get(block.format, 30.0)), 0.8))
        value, conversion_delay = 0.0, 0.0
        if block.category == "offer" and rng.random() < 0.08:
            value = round(float(rng.lognormal(math.log(30.0), 0.7)), 2)
            conversion_delay = delay + float(rng.lognormal(math.log(600.0), 1.2))
        return Outcome(1, delay, dwell, value, conversion_delay)

    # ---- visitors

    def visitors(
        self,
        n: int,
        start: datetime | None = None,
        *,
        stream: int = 0,
        first_index: int = 0,
    ) -> Iterator[Visitor]:
        """``n`` visitors in time order from ``start`` (aware; default Monday 2024-03-04 00:00 UTC).

        Arrivals are a non-homogeneous Poisson process sampled by thinning
        (Lewis & Shedler 1979): candidate gaps at the peak rate, each kept with
        probability rate(t) / peak. The rate is ``events_per_day`` times the
        share-weighted local hourly x weekday traffic of every location, and
        the location of an arrival is drawn proportionally to its term, so each
        country follows its own local diurnal curve. Same (seed, n, start,
        stream) -> same visitors.
        """
        if start is None:
            start = datetime(2024, 3, 4, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        pop = self.population
        # Scalar draws from the standard library generator (numpy's per-call overhead
        # dominates here), seeded through numpy's SeedSequence for independent streams.
        state = np.random.SeedSequence([self.seed, 1, stream]).generate_state(4)
        rng = random.Random(int.from_bytes(state.tobytes(), "little"))
        hourly = [h / (sum(pop.hourly_traffic) / 24.0) for h in pop.hourly_traffic]
        weekly = [d / (sum(pop.weekday_traffic) / 7.0) for d in pop.weekday_traffic]
        shares = [loc.share for loc in pop.locations]
        base_rate = self.events_per_day / 86_400.0  # per second
        peak = base_rate * max(hourly) * max(weekly)
        device_cdf = list(itertools.accumulate(d.share for d in pop.devices))
        segment_names = [s for s, _ in pop.segments]
        segment_cdf = list(itertools.accumulate(s for _, s in pop.segments))
        buckets: dict[int, list[float]] = {}
        t = start.astimezone(UTC).timestamp()
        for i in range(n):
            while True:
                t += rng.expovariate(peak)
                bucket = int(t // 1800)  # every zone offset here is a multiple of 30 minutes
                cdf = buckets.get(bucket)
                if cdf is None:
                    moment = datetime.fromtimestamp(bucket * 1800, UTC)
                    weights = []
                    for share, zone in zip(shares, self._zones, strict=True):
                        local = moment.astimezone(zone)
                        weights.append(share * hourly[local.hour] * weekly[local.weekday()])
                    if len(buckets) > 10_000:
                        buckets.clear()
                    cdf = buckets[bucket] = list(itertools.accumulate(weights))
                if rng.random() * peak < base_rate * cdf[-1]:
                    break
            loc = pop.locations[_pick(cdf, rng.random())]
            device = pop.devices[_pick(device_cdf, rng.random())]
            yield Visitor(
                index=first_index + i,
                timestamp=datetime.fromtimestamp(t, UTC),
                timezone=loc.timezone,
                country=loc.country,
                device_type=device.type,
                os=device.os,
                browser=device.browser,
                user_agent=device.user_agent,
                language=loc.language,
                returning=bool(rng.random() < pop.returning_share),
                segment=segment_names[_pick(segment_cdf, rng.random())],
            )


# --------------------------------------------------------------------------- runner


@dataclass(frozen=True)
class WindowSummary:
    """Mean expected click rates of a window of events, with the gap to the oracle closed.

    ``gap_closed = (policy - uniform) / (oracle - uniform)``: 0 is no better
    than choosing at random, 1 is the oracle. ``best_fixed`` is the best single
    block in hindsight over the same window.
    """

    n: int
    policy: float
    """Mean of sum_a pmf(a) * p(a): the policy's expected reward (no sampling noise)."""
    chosen: float
    """Mean expected reward of the chosen blocks."""
    realized: float
    """Mean realised click."""
    uniform: float
    oracle: float
    best_fixed: float
    best_fixed_block: str
    gap_closed: float
    regret: float
    """Mean per-event regret of the policy: oracle - policy."""


@dataclass(frozen=True, eq=False)
class SimulationResult:
    """Per-event record of a simulated run. Arrays have one row per event.

    Attributes:
        block_ids: (K,) the offered blocks, in candidate order.
        chosen: (n,) int, index of the chosen block.
        probability: (n,) float, the probability it was chosen with.
        reward: (n,) float, realised click.
        pmf: (n, K) the normalised pmf of every decision.
        expected: (n, K) the click probability of every block for every visitor.
        seconds: wall time of the run.
    """

    block_ids: tuple[str, ...]
    chosen: np.ndarray
    probability: np.ndarray
    reward: np.ndarray
    pmf: np.ndarray
    expected: np.ndarray
    seconds: float
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.chosen)

    @property
    def chosen_expected(self) -> np.ndarray:
        values: np.ndarray = self.expected[np.arange(self.n), self.chosen]
        return values

    @property
    def policy_expected(self) -> np.ndarray:
        values: np.ndarray = (self.pmf * self.expected).sum(axis=1)
        return values

    @property
    def oracle_expected(self) -> np.ndarray:
        values: np.ndarray = self.expected.max(axis=1)
        return values

    @property
    def uniform_expected(self) -> np.ndarray:
        values: np.ndarray = self.expected.mean(axis=1)
        return values

    def summary(self, start: int = 0, stop: int | None = None) -> WindowSummary:
        """Summary of events ``[start, stop)`` (negative start counts from the end)."""
        window = slice(start, stop)
        expected = self.expected[window]
        if len(expected) == 0:
            raise ValueError("empty window")
        policy = float(self.policy_expected[window].mean())
        uniform = float(expected.mean())
        oracle = float(expected.max(axis=1).mean())
        columns = expected.mean(axis=0)
        best = int(np.argmax(columns))
        span = oracle - uniform
        return WindowSummary(
            n=len(expected),
            policy=policy,
            chosen=float(self.chosen_expected[window].mean()),
            realized=float(self.reward[window].mean()),
            uniform=uniform,
            oracle=oracle,
            best_fixed=float(columns[best]),
            best_fixed_block=self.block_ids[best],
            gap_closed=(policy - uniform) / span if span > 0 else float("nan"),
            regret=oracle - policy,
        )

    def curve(self, bins: int = 20) -> list[WindowSummary]:
        """Learning curve: the summary of ``bins`` consecutive equal windows."""
        edges = np.linspace(0, self.n, bins + 1).astype(int)
        return [self.summary(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def run_policy(
    world: World,
    chooser: Chooser | Callable[[], Chooser],
    n_events: int,
    *,
    learn: bool = True,
    seed: int = 0,
    start: datetime | None = None,
    blocks: Sequence[Block] | None = None,
    catalog_key: str | None = None,
    stream: int = 0,
) -> SimulationResult:
    """Run a chooser against ``world`` for ``n_events`` decisions, in-process.

    Each decision: the visitor's context and the candidates go to
    ``chooser.pmf``; the pmf is cleaned with ``normalize_pmf`` and sampled with
    ``sample_index`` at a uniform draw; the click is drawn with the world's click probability; if
    ``learn`` and the chooser has ``learn`` (``VWPolicy``), it learns at once
    from the cost ``cost_from_reward(click, 0, 1)`` and the logged probability.

    Args:
        chooser: a policy (``VWPolicy``, ``UniformPolicy``, ``FixedPolicy``...) or
            a zero-argument factory of one.
        seed: seeds sampling and clicks (the visitors come from the world's seed).
        blocks: candidates offered every time (default: the world's catalog).
        catalog_key: passed to ``pmf`` (reuse of parsed block examples).
    """
    policy: Any = chooser if hasattr(chooser, "pmf") else chooser()
    offered = tuple(world.catalog if blocks is None else blocks)
    candidates = [b.to_candidate() for b in offered]
    offered_index = world._indices(offered)
    k = len(offered)
    rng = np.random.default_rng([seed, 2])
    chosen = np.empty(n_events, dtype=np.int64)
    probability = np.empty(n_events)
    reward = np.empty(n_events)
    pmfs = np.empty((n_events, k))
    expected = np.empty((n_events, k))
    learner = getattr(policy, "learn", None) if learn else None
    began = _time.perf_counter()
    for i, visitor in enumerate(world.visitors(n_events, start, stream=stream)):
        context: Features = visitor.context()
        pmf = normalize_pmf(policy.pmf(context, candidates, catalog_key))
        index = sample_index(pmf, float(rng.random()))
        p = world._catalog_probabilities(visitor)[offered_index]
        click = float(rng.random() < p[index])
        chosen[i], probability[i], reward[i] = index, pmf[index], click
        pmfs[i], expected[i] = pmf, p
        if learner is not None:
            learner(context, candidates, index, cost_from_reward(click, 0.0, 1.0), pmf[index])
    seconds = _time.perf_counter() - began
    return SimulationResult(
        block_ids=tuple(b.id for b in offered),
        chosen=chosen,
        probability=probability,
        reward=reward,
        pmf=pmfs,
        expected=expected,
        seconds=seconds,
        meta={"world_seed": world.seed, "seed": seed, "drift": world.drift, "learn": learn},
    )
