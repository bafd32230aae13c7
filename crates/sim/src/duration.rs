//! Durations in configuration: written as `"250ms"`, `"30s"`, `"5m"`, `"1h"`,
//! `"20us"` or a plain number of seconds (`2`, `0.5`), the same notation the
//! rest of runnel uses. Kept here because this crate does not depend on
//! runnel-core.

use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde::ser::Serializer;

/// Reads a duration written as `"250ms"`, `"1.5s"`, `"5m"`, `"1h"`, `"20us"`
/// or a bare number of seconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    // Longest suffixes first: "ms" and "us" would otherwise be read as "s".
    let units: [(&str, f64); 8] = [
        ("ms", 1e-3),
        ("us", 1e-6),
        ("µs", 1e-6),
        ("min", 60.0),
        ("h", 3600.0),
        ("m", 60.0),
        ("s", 1.0),
        ("", 1.0),
    ];
    let (number, scale) = units
        .iter()
        .find_map(|(suffix, scale)| t.strip_suffix(suffix).map(|n| (n.trim_end(), *scale)))
        .unwrap_or((t, 1.0));
    let value: f64 = number.parse().map_err(|_| {
        format!("`{text}` is not a duration (write e.g. \"250ms\", \"30s\", \"5m\" or a number of seconds)")
    })?;
    seconds(value * scale).ok_or_else(|| format!("`{text}` is negative or too large"))
}

fn seconds(value: f64) -> Option<Duration> {
    if value.is_finite() && (0.0..1.0e12).contains(&value) {
        Some(Duration::from_secs_f64(value))
    } else {
        None
    }
}

/// Writes a duration so that [`parse`] reads it back exactly: whole seconds
/// as `"30s"`, whole milliseconds as `"250ms"`, anything finer in `"us"`.
pub fn format(d: Duration) -> String {
    match (d.subsec_nanos(), d.subsec_nanos() % 1_000_000) {
        (0, _) => format!("{}s", d.as_secs()),
        (_, 0) => format!("{}ms", d.as_millis()),
        _ => format!("{}us", d.as_secs_f64() * 1e6),
    }
}

/// `#[serde(with = "crate::duration")]` entry point: writes text.
pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*d))
}

/// `#[serde(with = "crate::duration")]` entry point: reads text or a number
/// of seconds.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Text(String),
        Seconds(f64),
    }
    match Written::deserialize(deserializer) {
        Ok(Written::Text(text)) => parse(&text).map_err(de::Error::custom),
        Ok(Written::Seconds(value)) => seconds(value)
            .ok_or_else(|| de::Error::custom(format!("duration {value} is negative or too large"))),
        Err(_) => Err(de::Error::custom(
            "expected a duration such as \"250ms\", \"30s\" or a number of seconds",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_unit_and_bare_numbers() {
        let cases = [
            ("250ms", Duration::from_millis(250)),
            ("30s", Duration::from_secs(30)),
            ("1.5s", Duration::from_millis(1500)),
            ("5m", Duration::from_secs(300)),
            ("2min", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("20us", Duration::from_micros(20)),
            ("2", Duration::from_secs(2)),
            (" 0.5 ", Duration::from_millis(500)),
            ("10 ms", Duration::from_millis(10)),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_garbage_and_negative_values_with_the_text() {
        for text in ["", "fast", "-1s", "3 parsecs", "NaN", "1e13"] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(&format!("`{text}`")), "{err}");
        }
    }

    #[test]
    fn format_round_trips() {
        for d in [
            Duration::ZERO,
            Duration::from_secs(7),
            Duration::from_millis(1250),
            Duration::from_micros(1500),
        ] {
            assert_eq!(parse(&format(d)), Ok(d), "{}", format(d));
        }
    }

    #[test]
    fn serde_reads_numbers_and_text() {
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(with = "super")]
            d: Duration,
        }
        let t: T = serde_json::from_str(r#"{"d": 3}"#).unwrap();
        assert_eq!(t.d, Duration::from_secs(3));
        let t: T = serde_json::from_str(r#"{"d": 0.25}"#).unwrap();
        assert_eq!(t.d, Duration::from_millis(250));
        let t: T = serde_json::from_str(r#"{"d": "40ms"}"#).unwrap();
        assert_eq!(t.d, Duration::from_millis(40));
        assert!(serde_json::from_str::<T>(r#"{"d": -2}"#).is_err());
    }
}
