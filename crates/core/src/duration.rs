//! The one duration syntax of runnel: every setting, command-line flag and
//! simulator option reads durations written as `"250ms"`, `"30s"`, `"5m"`,
//! `"2min"`, `"1h"`, `"20us"`, `"1.5s"` or a plain number of seconds, and
//! writes them so that they read back exactly. Use it with
//! `#[serde(with = "runnel_core::duration")]`.

use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// The largest duration accepted, in seconds (about 31,700 years): large
/// enough for any setting, small enough that adding it to an `Instant` never
/// overflows.
const MAX_SECONDS: f64 = 1.0e12;

/// Parses a duration text such as `"250ms"`, `"30s"`, `"5m"`, `"1h"`,
/// `"20us"` or `"2"` (seconds). Space between number and unit is allowed.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("`{text}` is not a duration (write e.g. \"250ms\", \"30s\", \"5m\" or a number of seconds)")
    })?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "`{text}` has an unknown unit `{other}` (use us, ms, s, m or h)"
            ));
        }
    };
    from_secs(value * scale).ok_or_else(|| format!("`{text}` is out of range"))
}

fn from_secs(seconds: f64) -> Option<Duration> {
    (seconds.is_finite() && (0.0..=MAX_SECONDS).contains(&seconds))
        .then(|| Duration::from_secs_f64(seconds))
}

/// Formats a duration so that [`parse`] reads it back exactly: whole seconds
/// as `"30s"`, whole milliseconds as `"250ms"`, anything finer in `"us"`.
pub fn format(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_secs_f64() * 1e6)
    }
}

/// Serialises as text (see [`format`]).
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

/// Deserialises from text or a number of seconds.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration such as \"30s\", \"500ms\" or a number of seconds")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            from_secs(v as f64).ok_or_else(|| E::custom("a duration must be at most 10^12 seconds"))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            if v < 0 {
                return Err(E::custom("a duration cannot be negative"));
            }
            from_secs(v as f64).ok_or_else(|| E::custom("a duration must be at most 10^12 seconds"))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            if v < 0.0 {
                return Err(E::custom("a duration cannot be negative"));
            }
            from_secs(v).ok_or_else(|| E::custom("a duration must be at most 10^12 seconds"))
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_unit_and_bare_numbers() {
        let cases = [
            ("250ms", Duration::from_millis(250)),
            ("30s", Duration::from_secs(30)),
            ("30sec", Duration::from_secs(30)),
            ("1.5s", Duration::from_millis(1500)),
            ("1.5", Duration::from_millis(1500)),
            ("5m", Duration::from_secs(300)),
            ("2min", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("20us", Duration::from_micros(20)),
            ("20µs", Duration::from_micros(20)),
            ("2", Duration::from_secs(2)),
            (" 0.5 ", Duration::from_millis(500)),
            ("10 ms", Duration::from_millis(10)),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_garbage_and_negative_values_naming_the_text() {
        for text in ["", "fast", "-1s", "3 parsecs", "NaN", "1e13", "1e30"] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(&format!("`{text}`")), "{err}");
        }
        assert!(parse("soon").unwrap_err().contains("not a duration"));
        assert!(parse("3 fortnights").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn format_round_trips() {
        for d in [
            Duration::ZERO,
            Duration::from_secs(7),
            Duration::from_millis(1250),
            Duration::from_micros(1500),
            Duration::from_micros(20),
        ] {
            assert_eq!(parse(&format(d)), Ok(d), "{}", format(d));
        }
    }

    #[test]
    fn serde_reads_numbers_and_text_and_refuses_negative_or_huge() {
        #[derive(serde::Deserialize, Debug)]
        struct T {
            #[serde(with = "super")]
            #[allow(dead_code)]
            d: Duration,
        }
        let read = |json: &str| serde_json::from_str::<T>(json).map(|t| t.d);
        assert_eq!(read(r#"{"d": 3}"#).unwrap(), Duration::from_secs(3));
        assert_eq!(read(r#"{"d": 0.25}"#).unwrap(), Duration::from_millis(250));
        assert_eq!(read(r#"{"d": "40ms"}"#).unwrap(), Duration::from_millis(40));
        assert!(
            read(r#"{"d": -2}"#)
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
        assert!(
            read(r#"{"d": -0.5}"#)
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
        assert!(
            read(r#"{"d": 18446744073709551615}"#)
                .unwrap_err()
                .to_string()
                .contains("at most")
        );
    }
}
