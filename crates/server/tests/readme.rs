//! The README's configuration reference and examples cannot drift: its
//! `runnel config --defaults` block must equal what that command prints, its
//! example `runnel.toml` must load, and its copy of the example run file must
//! equal `crates/server/assets/arithmetic.toml`.
//!
//! `RUNNEL_UPDATE_README=1 cargo test -p runnel-server --test readme`
//! rewrites the defaults block.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use runnel_server::RunnelConfig;

fn readme_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../README.md")
}

/// The text between `<!-- BEGIN name -->` and `<!-- END name -->`, without
/// the code fence around it, and the byte range of that inner text.
fn block(readme: &str, name: &str) -> (String, std::ops::Range<usize>) {
    let begin = format!("<!-- BEGIN {name} -->");
    let end = format!("<!-- END {name} -->");
    let start = readme
        .find(&begin)
        .unwrap_or_else(|| panic!("README.md has no `{begin}` marker"))
        + begin.len();
    let stop = start
        + readme[start..]
            .find(&end)
            .unwrap_or_else(|| panic!("README.md has no `{end}` marker"));
    let fenced = &readme[start..stop];
    let open = fenced.find("```").expect("a code fence after the marker");
    let body_start = open + fenced[open..].find('\n').expect("a fence line") + 1;
    let body_end = fenced.rfind("```").expect("a closing fence");
    assert!(body_end >= body_start, "an empty block `{name}`");
    (
        fenced[body_start..body_end].to_owned(),
        start + body_start..start + body_end,
    )
}

#[test]
fn the_configuration_reference_is_the_defaults_output() {
    let path = readme_path();
    let readme = std::fs::read_to_string(&path).unwrap();
    let (documented, range) = block(&readme, "runnel config --defaults");
    let actual = RunnelConfig::defaults_toml();
    let actual = format!("{}\n", actual.trim_end());
    if documented == actual {
        return;
    }
    if std::env::var_os("RUNNEL_UPDATE_README").is_some() {
        let mut updated = readme.clone();
        updated.replace_range(range, &actual);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    panic!(
        "README.md's configuration reference differs from `runnel config --defaults`; \
         run `RUNNEL_UPDATE_README=1 cargo test -p runnel-server --test readme` to update it.\n\
         --- README\n{documented}\n--- runnel config --defaults\n{actual}"
    );
}

#[test]
fn the_example_configuration_loads() {
    let readme = std::fs::read_to_string(readme_path()).unwrap();
    let (example, _) = block(&readme, "example runnel.toml");
    let config = RunnelConfig::from_toml(&example)
        .unwrap_or_else(|e| panic!("README.md's example runnel.toml is invalid: {e}"));
    assert_eq!(config.providers.len(), 3);
    assert_eq!(config.providers["claude"].limits.rpm, Some(50));
    assert!(config.otel.endpoint.is_some());
}

#[test]
fn the_example_run_file_is_the_asset() {
    let readme = std::fs::read_to_string(readme_path()).unwrap();
    let (copy, _) = block(&readme, "crates/server/assets/arithmetic.toml");
    let asset = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/arithmetic.toml"),
    )
    .unwrap();
    assert_eq!(
        copy, asset,
        "README.md's copy of assets/arithmetic.toml differs"
    );
    let file = runnel_server::oneshot::read_run_file(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/arithmetic.toml"),
    )
    .unwrap();
    assert_eq!(file.evaluators.len(), 1);
}

#[test]
fn the_block_reader_finds_fenced_text() {
    let text = "a\n<!-- BEGIN x -->\n```toml\nk = 1\n```\n<!-- END x -->\n";
    let (body, range) = block(text, "x");
    assert_eq!(body, "k = 1\n");
    assert_eq!(&text[range], "k = 1\n");
}
