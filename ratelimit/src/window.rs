//! Time units and fixed-window arithmetic.
//!
//! Counting follows envoyproxy/ratelimit: every limit counts hits in a fixed
//! window of one unit (a second, a minute, …) aligned on the Unix epoch. The
//! window that contains `now` starts at `now - now % unit_seconds` and ends
//! `unit_seconds` later; the counter key carries the window start, so a new
//! window starts a fresh counter and the old one simply expires.

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit as PbUnit;

/// The unit of a rate limit: the length of its counting window.
///
/// The names and lengths are those of envoyproxy/ratelimit (`UnitToDivider`),
/// including its 30-day month and 365-day year, so the same YAML counts the
/// same way in both services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// One second.
    Second,
    /// 60 seconds.
    Minute,
    /// 3 600 seconds.
    Hour,
    /// 86 400 seconds.
    Day,
    /// 7 days.
    Week,
    /// 30 days (not a calendar month, as in envoyproxy/ratelimit).
    Month,
    /// 365 days (not a calendar year, as in envoyproxy/ratelimit).
    Year,
}

impl Unit {
    /// Every unit, shortest first (used to list the accepted names in errors).
    pub const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    /// Parses a unit name the way envoyproxy/ratelimit does: case-insensitive
    /// match against the protobuf enum names, `UNKNOWN` excluded.
    pub fn parse(name: &str) -> Option<Unit> {
        match name.to_ascii_uppercase().as_str() {
            "SECOND" => Some(Unit::Second),
            "MINUTE" => Some(Unit::Minute),
            "HOUR" => Some(Unit::Hour),
            "DAY" => Some(Unit::Day),
            "WEEK" => Some(Unit::Week),
            "MONTH" => Some(Unit::Month),
            "YEAR" => Some(Unit::Year),
            _ => None,
        }
    }

    /// The lower-case name used in YAML and logs.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    /// The window length in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 60 * 60,
            Unit::Day => 60 * 60 * 24,
            Unit::Week => 60 * 60 * 24 * 7,
            Unit::Month => 60 * 60 * 24 * 30,
            Unit::Year => 60 * 60 * 24 * 365,
        }
    }

    /// The protobuf enum value sent back in `current_limit.unit`.
    pub fn to_pb(self) -> PbUnit {
        match self {
            Unit::Second => PbUnit::Second,
            Unit::Minute => PbUnit::Minute,
            Unit::Hour => PbUnit::Hour,
            Unit::Day => PbUnit::Day,
            Unit::Week => PbUnit::Week,
            Unit::Month => PbUnit::Month,
            Unit::Year => PbUnit::Year,
        }
    }

    /// Converts the protobuf enum value of a request's limit override;
    /// `None` for `UNKNOWN` or a value this build does not know.
    pub fn from_pb(value: i32) -> Option<Unit> {
        match PbUnit::try_from(value).ok()? {
            PbUnit::Unknown => None,
            PbUnit::Second => Some(Unit::Second),
            PbUnit::Minute => Some(Unit::Minute),
            PbUnit::Hour => Some(Unit::Hour),
            PbUnit::Day => Some(Unit::Day),
            PbUnit::Week => Some(Unit::Week),
            PbUnit::Month => Some(Unit::Month),
            PbUnit::Year => Some(Unit::Year),
        }
    }
}

/// Start (Unix seconds) of the window of `unit` that contains `now`.
///
/// Uses Euclidean remainder so that a (theoretical) negative clock still
/// yields a start at or before `now`.
pub fn window_start(now: i64, unit: Unit) -> i64 {
    now - now.rem_euclid(unit.seconds())
}

/// End (Unix seconds, exclusive) of the window of `unit` that contains `now`.
pub fn window_end(now: i64, unit: Unit) -> i64 {
    window_start(now, unit) + unit.seconds()
}

/// Seconds from `now` until the window of `unit` that contains `now` ends:
/// always between 1 and `unit.seconds()`, as `duration_until_reset` in
/// envoyproxy/ratelimit (`CalculateReset`).
pub fn seconds_until_reset(now: i64, unit: Unit) -> i64 {
    unit.seconds() - now.rem_euclid(unit.seconds())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_parse_case_insensitively() {
        assert_eq!(Unit::parse("second"), Some(Unit::Second));
        assert_eq!(Unit::parse("MINUTE"), Some(Unit::Minute));
        assert_eq!(Unit::parse("Hour"), Some(Unit::Hour));
        assert_eq!(Unit::parse("day"), Some(Unit::Day));
        assert_eq!(Unit::parse("week"), Some(Unit::Week));
        assert_eq!(Unit::parse("month"), Some(Unit::Month));
        assert_eq!(Unit::parse("year"), Some(Unit::Year));
        assert_eq!(Unit::parse("unknown"), None);
        assert_eq!(Unit::parse("seconds"), None);
        assert_eq!(Unit::parse(""), None);
        for unit in Unit::ALL {
            assert_eq!(Unit::parse(unit.name()), Some(unit));
            assert_eq!(Unit::from_pb(unit.to_pb() as i32), Some(unit));
        }
        assert_eq!(Unit::from_pb(0), None);
        assert_eq!(Unit::from_pb(99), None);
    }

    #[test]
    fn unit_lengths_match_envoyproxy_ratelimit() {
        assert_eq!(Unit::Second.seconds(), 1);
        assert_eq!(Unit::Minute.seconds(), 60);
        assert_eq!(Unit::Hour.seconds(), 3600);
        assert_eq!(Unit::Day.seconds(), 86_400);
        assert_eq!(Unit::Week.seconds(), 604_800);
        assert_eq!(Unit::Month.seconds(), 2_592_000);
        assert_eq!(Unit::Year.seconds(), 31_536_000);
    }

    #[test]
    fn window_math() {
        // 2021-01-01T00:00:30Z
        let now = 1_609_459_230;
        assert_eq!(window_start(now, Unit::Second), now);
        assert_eq!(seconds_until_reset(now, Unit::Second), 1);
        assert_eq!(window_start(now, Unit::Minute), 1_609_459_200);
        assert_eq!(window_end(now, Unit::Minute), 1_609_459_260);
        assert_eq!(seconds_until_reset(now, Unit::Minute), 30);
        assert_eq!(window_start(now, Unit::Hour), 1_609_459_200);
        assert_eq!(seconds_until_reset(now, Unit::Hour), 3570);
        assert_eq!(window_start(now, Unit::Day), 1_609_459_200);
        assert_eq!(seconds_until_reset(now, Unit::Day), 86_370);
        // On a boundary the new window has just started: a full unit is left.
        assert_eq!(window_start(1_609_459_200, Unit::Minute), 1_609_459_200);
        assert_eq!(seconds_until_reset(1_609_459_200, Unit::Minute), 60);
        // One second before the boundary.
        assert_eq!(window_start(1_609_459_259, Unit::Minute), 1_609_459_200);
        assert_eq!(seconds_until_reset(1_609_459_259, Unit::Minute), 1);
        // Weeks are epoch-aligned like every other unit (the epoch was a Thursday).
        assert_eq!(window_start(now, Unit::Week) % 604_800, 0);
        assert!(window_start(now, Unit::Week) <= now);
        assert!(window_end(now, Unit::Week) > now);
    }

    #[test]
    fn window_math_is_sane_for_negative_time() {
        assert_eq!(window_start(-1, Unit::Minute), -60);
        assert_eq!(seconds_until_reset(-1, Unit::Minute), 1);
    }
}
