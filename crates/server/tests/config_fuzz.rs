//! Configuration fuzzing: generated `runnel.toml` documents — every known
//! key (read from `runnel config --defaults`) and misspelt ones, in known and
//! unknown sections, with values of every TOML type and extreme numbers and
//! durations — never panic the loader. A document is either accepted (then
//! it validates and its masked form reloads) or refused with one error that
//! names a key and says what is wrong.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use runnel_server::RunnelConfig;

/// Sections and their keys, from the defaults document.
fn known_keys() -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in RunnelConfig::defaults_toml().lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            out.entry(section.clone()).or_default();
        } else if let Some((key, _)) = line.split_once(" = ") {
            out.entry(section.clone()).or_default().push(key.to_owned());
        }
    }
    // Provider tables are not in the defaults; these are their keys.
    out.insert(
        "providers.fuzz".into(),
        [
            "kind",
            "base_url",
            "api_key_env",
            "rpm",
            "tpm",
            "initial_rps",
            "unlimited",
            "connect_timeout",
            "max_response_bytes",
            "stream",
            "default_max_tokens",
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    out
}

/// A TOML value: every type, extremes, and duration-like text.
fn value() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        prop::sample::select(vec![
            "0",
            "1",
            "-1",
            "9223372036854775807",
            "-9223372036854775808",
            "4294967296",
            "1.5",
            "-0.0",
            "1e308",
            "nan",
            "inf",
            "-inf",
            "true",
            "false",
            "\"30s\"",
            "\"500ms\"",
            "\"-1s\"",
            "\"1e9h\"",
            "\"\"",
            "\"soon\"",
            "\"0\"",
            "\"99999999999999999999s\"",
            "\"1.5m\"",
            "\"0.0000001ms\"",
            "\"3 h\"",
            "\"µs\"",
            "\"0.0.0.0:80\"",
            "\"127.0.0.1:0\"",
            "\"[::1]:8080\"",
            "\"sqlite::memory:\"",
            "\"postgres://u:p@h/db\"",
            "\"mysql://x\"",
            "\"openai\"",
            "\"anthropic\"",
            "\"json\"",
            "\"human\"",
            "\"trace\"",
            "\"x\\u0000y\"",
            "1979-05-27T07:32:00Z",
        ])
        .prop_map(str::to_owned),
        "\"[ -~]{0,16}\"".prop_map(|s| s.replace('\\', "")),
    ];
    scalar.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..3).prop_map(|kv| {
                let fields: Vec<String> =
                    kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", fields.join(", "))
            }),
        ]
    })
}

/// A document of up to a few sections, each with a few keys.
fn document() -> impl Strategy<Value = String> {
    let keys = known_keys();
    let sections: Vec<String> = keys.keys().cloned().collect();
    let entry = (
        prop::sample::select(sections),
        any::<prop::sample::Index>(),
        0u8..10,
        value(),
    )
        .prop_map(move |(section, index, mangle, value)| {
            let known = &keys[&section];
            let key = if known.is_empty() {
                "zz".to_owned()
            } else {
                index.get(known).clone()
            };
            // Mostly known keys; sometimes misspelt or in an unknown section.
            let (section, key) = match mangle {
                0 => (section, format!("{key}s")),
                1 => ("sheduler".to_owned(), key),
                _ => (section, key),
            };
            (section, key, value)
        });
    prop::collection::vec(entry, 0..8).prop_map(|entries| {
        let mut by_section: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (section, key, value) in entries {
            by_section.entry(section).or_default().insert(key, value);
        }
        let mut text = String::new();
        for (section, keys) in by_section {
            text.push_str(&format!("[{section}]\n"));
            for (k, v) in keys {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
        text
    })
}

fn check(text: &str) -> Result<(), TestCaseError> {
    match RunnelConfig::from_toml(text) {
        Ok(config) => {
            prop_assert!(config.validate().is_ok());
            let masked = config.to_masked_toml();
            let reloaded = RunnelConfig::from_toml(&masked);
            prop_assert!(
                reloaded.is_ok(),
                "accepted, but its masked form does not reload: {:?}\n{}",
                reloaded.err(),
                masked
            );
        }
        Err(e) => {
            prop_assert!(!e.key.trim().is_empty(), "no key in {e} for:\n{text}");
            prop_assert!(
                !e.message.trim().is_empty(),
                "no message in {e} for:\n{text}"
            );
            prop_assert!(e.to_string().contains(&e.key));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    /// Generated documents load or are refused with a clear error; never a panic.
    #[test]
    fn generated_configurations_load_or_name_the_bad_key(text in document()) {
        check(&text)?;
    }

    /// Arbitrary text (mostly not TOML at all) is refused, not a panic.
    #[test]
    fn arbitrary_text_is_refused_not_a_panic(text in "\\PC{0,200}") {
        check(&text)?;
    }
}

#[test]
fn the_generator_reaches_every_section_of_the_defaults() {
    let keys = known_keys();
    for section in [
        "server",
        "database",
        "scheduler",
        "advisor",
        "auth",
        "otel",
        "log",
    ] {
        assert!(
            keys.get(section).is_some_and(|k| !k.is_empty()),
            "no keys read for [{section}]: {keys:?}"
        );
    }
}
