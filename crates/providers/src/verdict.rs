//! Reading an evaluator's verdict from the judge model's reply. Usable on
//! its own.
//!
//! **Label evaluators** (a list of allowed labels): the reply must name
//! exactly one label. Matching ignores case and punctuation and works on
//! whole words, so `INCORRECT` never counts as `CORRECT`, and a longer label
//! hides a shorter one inside it (`NOT RELEVANT` is not also `RELEVANT`).
//! When several labels appear, the first rule that singles one out wins:
//!
//! 1. the whole reply is a label (`"Correct."`, `"**CORRECT**"`);
//! 2. a label right after `Label:` / `Verdict:` / `Answer:` /
//!    `Classification:` / `Grade:` (the last such marker wins);
//! 3. the reply starts with a label (`"INCORRECT. The correct answer is 4"`);
//! 4. exactly one label on the first non-empty line;
//! 5. exactly one label in the whole reply;
//! 6. the reply ends with a label (`"… so the answer is INCORRECT"`).
//!
//! **Score evaluators** (no labels): a number, read the same way (`"7"`,
//! `"Score: 7/10"` → 7, `"0.8"`, `"85%"` → 85; markers `Score:`, `Rating:`,
//! `Grade:`); a denominator is the scale, not part of the score.
//!
//! The rest of the reply becomes the explanation. A reply that fits none of
//! the rules is an error that quotes (the start of) what was received.
//!
//! ```
//! use runnel_providers::verdict::parse_verdict;
//! let labels = ["CORRECT".to_string(), "INCORRECT".to_string()];
//! let v = parse_verdict("incorrect — the capital is Paris, not Lyon", &labels).unwrap();
//! assert_eq!(v.label.as_deref(), Some("INCORRECT"));
//! assert_eq!(v.explanation.as_deref(), Some("the capital is Paris, not Lyon"));
//! let v = parse_verdict("Reasoning: fine.\nScore: 7/10", &[]).unwrap();
//! assert_eq!(v.score, Some(7.0));
//! assert!(parse_verdict("maybe?", &labels).is_err());
//! ```

use runnel_core::Reply;

use crate::redact::truncate;

/// How much of an unreadable reply an error quotes, in characters. Not a
/// setting: the whole message is cut to `calls.max_error_chars`, the one
/// knob for error length.
const QUOTE_CHARS: usize = 200;

const LABEL_MARKERS: &[&str] = &["label", "verdict", "answer", "classification", "grade"];
const SCORE_MARKERS: &[&str] = &["score", "rating", "grade", "verdict", "answer"];
const EXPLANATION_PREFIXES: &[&str] = &[
    "explanation",
    "reason",
    "reasoning",
    "rationale",
    "justification",
];

/// What a judge decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// The label, spelled as configured (label evaluators).
    pub label: Option<String>,
    /// The score (score evaluators).
    pub score: Option<f64>,
    /// The rest of the reply, if any.
    pub explanation: Option<String>,
}

impl From<Verdict> for Reply {
    fn from(v: Verdict) -> Self {
        Reply::Eval {
            label: v.label,
            score: v.score,
            explanation: v.explanation,
        }
    }
}

/// Reads a verdict: a label when `labels` is not empty, else a score. The
/// error says what was expected and quotes what was received.
pub fn parse_verdict(reply: &str, labels: &[String]) -> Result<Verdict, String> {
    if labels.is_empty() {
        let (score, explanation) = parse_score(reply)?;
        Ok(Verdict {
            label: None,
            score: Some(score),
            explanation,
        })
    } else {
        let (label, explanation) = parse_label(reply, labels)?;
        Ok(Verdict {
            label: Some(label),
            score: None,
            explanation,
        })
    }
}

/// Checks a label list when an evaluator is created: labels must be
/// distinct once case and punctuation are ignored, and none may be empty.
pub fn validate_labels(labels: &[String]) -> Result<(), String> {
    let mut seen: Vec<(Vec<String>, &str)> = Vec::new();
    for label in labels {
        if label.trim().is_empty() {
            return Err("a label is empty".to_owned());
        }
        let words = words_of(label);
        let key = if words.is_empty() {
            vec![label.trim().to_lowercase()]
        } else {
            words
        };
        if let Some((_, other)) = seen.iter().find(|(k, _)| *k == key) {
            return Err(format!(
                "labels `{other}` and `{label}` cannot be told apart (case and punctuation are ignored)"
            ));
        }
        seen.push((key, label));
    }
    Ok(())
}

#[derive(Debug)]
struct Word {
    start: usize,
    end: usize,
    lower: String,
    line: usize,
}

fn tokenize(text: &str) -> Vec<Word> {
    let mut words = Vec::new();
    let mut line = 0;
    let mut current: Option<usize> = None;
    for (i, c) in text.char_indices() {
        if c.is_alphanumeric() {
            if current.is_none() {
                current = Some(i);
            }
            continue;
        }
        if let Some(start) = current.take() {
            words.push(Word {
                start,
                end: i,
                lower: text[start..i].to_lowercase(),
                line,
            });
        }
        if c == '\n' {
            line += 1;
        }
    }
    if let Some(start) = current {
        words.push(Word {
            start,
            end: text.len(),
            lower: text[start..].to_lowercase(),
            line,
        });
    }
    words
}

fn words_of(text: &str) -> Vec<String> {
    tokenize(text).into_iter().map(|w| w.lower).collect()
}

/// A place in the reply where a candidate (label or number) was found.
#[derive(Clone, Copy, Debug)]
struct Hit<T> {
    value: T,
    start: usize,
    end: usize,
    line: usize,
}

/// A marker (`Label:`) and the byte offset just after its colon.
struct Marker {
    start: usize,
    after: usize,
    line: usize,
}

fn find_markers(text: &str, words: &[Word], names: &[&str]) -> Vec<Marker> {
    words
        .iter()
        .filter(|w| names.contains(&w.lower.as_str()))
        .filter_map(|w| {
            let rest = &text[w.end..];
            let skip = rest
                .char_indices()
                .find(|&(_, c)| !matches!(c, ' ' | '\t' | '*' | '_' | '`'))
                .map(|(i, _)| i)?;
            let colon = rest[skip..].chars().next()?;
            matches!(colon, ':' | '=').then_some(Marker {
                start: w.start,
                after: w.end + skip + 1,
                line: w.line,
            })
        })
        .collect()
}

/// The hit a marker points at: the first one after it on its line, or, when
/// nothing but punctuation follows the marker on its line, the first on the
/// next line that has any.
fn hit_after<T: Copy>(text: &str, marker: &Marker, hits: &[Hit<T>]) -> Option<Hit<T>> {
    let after: Vec<&Hit<T>> = hits.iter().filter(|h| h.start >= marker.after).collect();
    let first = after.first()?;
    if first.line == marker.line {
        return Some(**first);
    }
    let rest_of_line = text[marker.after..].split('\n').next().unwrap_or_default();
    (!rest_of_line.chars().any(char::is_alphanumeric)).then_some(**first)
}

/// Applies the rules shared by labels and scores to candidate `hits`
/// (rules 2 to 6 of the module documentation). Returns the chosen hit and,
/// when a marker chose it, where the marker starts; or every distinct value
/// found when no rule singles one out.
fn choose<T: Copy + PartialEq>(
    text: &str,
    hits: &[Hit<T>],
    markers: &[Marker],
) -> Result<(Hit<T>, Option<usize>), Vec<T>> {
    // Rule 2: the last marker that points at something.
    if let Some((hit, marker)) = markers
        .iter()
        .rev()
        .find_map(|m| hit_after(text, m, hits).map(|h| (h, m.start)))
    {
        return Ok((hit, Some(marker)));
    }
    let distinct = |hs: &mut dyn Iterator<Item = &Hit<T>>| {
        let mut values: Vec<T> = Vec::new();
        for h in hs {
            if !values.contains(&h.value) {
                values.push(h.value);
            }
        }
        values
    };
    let (Some(first), Some(last)) = (hits.first(), hits.last()) else {
        return Err(Vec::new());
    };
    let content_start = text.find(|c: char| !is_decoration(c));
    let content_end = text
        .rfind(|c: char| !is_decoration(c))
        .map(|i| i + text[i..].chars().next().map_or(1, char::len_utf8));
    // Rule 3: the reply starts with one.
    if content_start == Some(first.start) {
        return Ok((*first, None));
    }
    // Rule 4: exactly one on the first line that has content.
    let first_line = content_start.map_or(0, |i| text[..i].matches('\n').count());
    let on_line: Vec<&Hit<T>> = hits.iter().filter(|h| h.line == first_line).collect();
    if distinct(&mut on_line.iter().copied()).len() == 1 {
        return Ok((*on_line[0], None));
    }
    // Rule 5: exactly one in the whole reply.
    let all = distinct(&mut hits.iter());
    if all.len() == 1 {
        return Ok((*first, None));
    }
    // Rule 6: the reply ends with one.
    if content_end == Some(last.end) {
        return Ok((*last, None));
    }
    Err(all)
}

fn is_decoration(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '*' | '_' | '`' | '"' | '\'' | '.' | '!' | ':' | '#' | '>' | '(' | ')' | '[' | ']'
        )
}

/// The reply minus the verdict: what precedes the verdict on its line is
/// removed only when it is a marker or decoration, so an explanation that
/// merely mentions the label stays whole.
fn explanation(text: &str, cut_from: Option<usize>, start: usize, end: usize) -> Option<String> {
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let from = match cut_from {
        Some(m) => Some(m),
        None => text[line_start..start]
            .chars()
            .all(is_decoration)
            .then_some(line_start),
    };
    let rest = match from {
        Some(from) => format!("{}\n{}", &text[..from], &text[end..]),
        None => text.to_owned(),
    };
    // Leading punctuation is what separated the verdict from the rest;
    // trailing punctuation belongs to the explanation's last sentence.
    let trimmed = rest
        .trim_start_matches(|c: char| {
            c.is_whitespace()
                || matches!(
                    c,
                    '*' | '_' | '`' | '.' | ',' | ':' | ';' | '-' | '—' | ')' | ']' | '/' | '!'
                )
        })
        .trim_end_matches(|c: char| c.is_whitespace() || matches!(c, '*' | '_' | '`'));
    let without_prefix = EXPLANATION_PREFIXES
        .iter()
        .find_map(|p| {
            let head = trimmed.get(..p.len())?;
            if !head.eq_ignore_ascii_case(p) {
                return None;
            }
            trimmed[p.len()..]
                .trim_start_matches(['*', ' '])
                .strip_prefix(':')
        })
        .unwrap_or(trimmed)
        .trim();
    (!without_prefix.is_empty()).then(|| without_prefix.to_owned())
}

fn received(reply: &str) -> String {
    format!("received: {:?}", truncate(reply.trim(), QUOTE_CHARS))
}

/// Finds exactly one of `labels` in `reply`; returns it (spelled as
/// configured) and the explanation.
pub fn parse_label(reply: &str, labels: &[String]) -> Result<(String, Option<String>), String> {
    let expected = labels.join(", ");
    // Rule 1: the whole reply is a label (also serves labels without letters).
    let bare = reply.trim_matches(is_decoration);
    for candidate in [reply.trim(), bare] {
        if let Some(label) = labels
            .iter()
            .find(|l| l.trim().to_lowercase() == candidate.to_lowercase())
        {
            return Ok((label.clone(), None));
        }
    }
    let words = tokenize(reply);
    let label_words: Vec<Vec<String>> = labels.iter().map(|l| words_of(l)).collect();
    let mut hits: Vec<Hit<usize>> = Vec::new();
    for i in 0..words.len() {
        for (label, lw) in label_words.iter().enumerate() {
            let n = lw.len();
            if n > 0
                && i + n <= words.len()
                && words[i..i + n].iter().zip(lw).all(|(w, l)| w.lower == *l)
            {
                hits.push(Hit {
                    value: label,
                    start: words[i].start,
                    end: words[i + n - 1].end,
                    line: words[i].line,
                });
            }
        }
    }
    // A hit inside a longer hit is part of that label, not a label itself.
    let spans: Vec<(usize, usize)> = hits.iter().map(|h| (h.start, h.end)).collect();
    hits.retain(|h| {
        !spans
            .iter()
            .any(|&(s, e)| s <= h.start && h.end <= e && e - s > h.end - h.start)
    });
    let markers = find_markers(reply, &words, LABEL_MARKERS);
    match choose(reply, &hits, &markers) {
        Ok((hit, marker)) => Ok((
            labels[hit.value].clone(),
            explanation(reply, marker, hit.start, hit.end),
        )),
        Err(found) if found.is_empty() => Err(format!(
            "none of the labels ({expected}) found in the reply; {}",
            received(reply)
        )),
        Err(found) => {
            let names: Vec<&str> = found.iter().map(|&i| labels[i].as_str()).collect();
            Err(format!(
                "the reply names several labels ({}) and none stands out; {}",
                names.join(", "),
                received(reply)
            ))
        }
    }
}

/// Finds the numbers of `text`: `7`, `-1`, `0.8`, `7/10` (7), `7 out of
/// 10` (7), `85%` (85). Digits glued to letters (`gpt4`, `3rd`) do not count.
fn numbers(text: &str) -> Vec<Hit<f64>> {
    let bytes = text.as_bytes();
    let mut hits = Vec::new();
    // Lines are counted incrementally: hits come in text order.
    let mut line = 0;
    let mut counted_to = 0;
    let mut i = 0;
    while i < bytes.len() {
        let glued_before = i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'.');
        if !bytes[i].is_ascii_digit() || glued_before {
            i += 1;
            continue;
        }
        let negative =
            i > 0 && bytes[i - 1] == b'-' && (i < 2 || !bytes[i - 2].is_ascii_alphanumeric());
        let start = if negative { i - 1 } else { i };
        let mut end = i;
        while end < bytes.len() && bytes[end].is_ascii_digit() {
            end += 1;
        }
        if end + 1 < bytes.len() && bytes[end] == b'.' && bytes[end + 1].is_ascii_digit() {
            end += 1;
            while end < bytes.len() && bytes[end].is_ascii_digit() {
                end += 1;
            }
        }
        let number_end = end;
        // Optional scale: "/10", " / 10", " out of 10", "%".
        let rest = &text[end..];
        let spaced = rest.trim_start_matches(' ');
        let scale = match spaced.strip_prefix('/') {
            Some(after) => Some(after.trim_start_matches(' ')),
            None => spaced
                .strip_prefix("out of ")
                .map(|a| a.trim_start_matches(' ')),
        };
        if let Some(after) = scale {
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 {
                end = text.len() - after.len() + digits;
            }
        } else if rest.starts_with('%') {
            end += 1;
        }
        let glued_after = text[end..]
            .chars()
            .next()
            .is_some_and(char::is_alphanumeric);
        if !glued_after
            && let Ok(value) = text[start..number_end].parse::<f64>()
            && value.is_finite()
        {
            line += text[counted_to..start].matches('\n').count();
            counted_to = start;
            hits.push(Hit {
                value,
                start,
                end,
                line,
            });
        }
        i = end;
    }
    hits
}

/// Reads a numeric score from `reply`; returns it and the explanation.
pub fn parse_score(reply: &str) -> Result<(f64, Option<String>), String> {
    let words = tokenize(reply);
    let hits = numbers(reply);
    let markers = find_markers(reply, &words, SCORE_MARKERS);
    match choose(reply, &hits, &markers) {
        Ok((hit, marker)) => Ok((hit.value, explanation(reply, marker, hit.start, hit.end))),
        Err(found) if found.is_empty() => Err(format!(
            "no score (a number) found in the reply; {}",
            received(reply)
        )),
        Err(found) => Err(format!(
            "the reply holds several numbers ({}) and none is marked as the score; {}",
            found
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            received(reply)
        )),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    /// `expected`: the label and explanation, or `Err(fragment of the error)`.
    fn check(reply: &str, names: &[&str], expected: Result<(&str, Option<&str>), &str>) {
        let got = parse_label(reply, &labels(names));
        match expected {
            Ok((label, expl)) => {
                let (l, e) = got.unwrap_or_else(|e| panic!("{reply:?}: {e}"));
                assert_eq!((l.as_str(), e.as_deref()), (label, expl), "{reply:?}");
            }
            Err(fragment) => {
                let e = got.expect_err(reply);
                assert!(e.contains(fragment), "{reply:?}: {e}");
            }
        }
    }

    const CI: &[&str] = &["CORRECT", "INCORRECT"];

    #[test]
    fn labels_on_word_boundaries_any_case_any_punctuation() {
        check("CORRECT", CI, Ok(("CORRECT", None)));
        check("  incorrect.\n", CI, Ok(("INCORRECT", None)));
        check("**Correct**", CI, Ok(("CORRECT", None)));
        check("INCORRECT", CI, Ok(("INCORRECT", None)));
        check(
            "The output is incorrect: 5 is not 4.",
            CI,
            Ok(("INCORRECT", Some("The output is incorrect: 5 is not 4."))),
        );
        check("It is uncorrectable", CI, Err("none of the labels"));
        // Case-changing characters must not confuse the explanation's cut.
        check("CORRECT\nİİİ fine", CI, Ok(("CORRECT", Some("İİİ fine"))));
        check("CORRECT\nREASON: ok", CI, Ok(("CORRECT", Some("ok"))));
        check(
            "NOT RELEVANT",
            &["RELEVANT", "NOT RELEVANT"],
            Ok(("NOT RELEVANT", None)),
        );
        check(
            "partially correct, missing units",
            &["CORRECT", "PARTIALLY_CORRECT", "WRONG"],
            Ok(("PARTIALLY_CORRECT", Some("missing units"))),
        );
    }

    #[test]
    fn prefers_markers_then_the_start_then_the_first_line() {
        check(
            "The answer looks correct at first, but it is wrong.\nLabel: INCORRECT",
            CI,
            Ok((
                "INCORRECT",
                Some("The answer looks correct at first, but it is wrong."),
            )),
        );
        check(
            "**Verdict:** correct\nExplanation: matches the reference.",
            CI,
            Ok(("CORRECT", Some("matches the reference."))),
        );
        check(
            "Label:\nINCORRECT\nbecause it is not correct",
            CI,
            Ok(("INCORRECT", Some("because it is not correct"))),
        );
        check(
            "INCORRECT. The correct answer is 4.",
            CI,
            Ok(("INCORRECT", Some("The correct answer is 4."))),
        );
        check(
            "Looks CORRECT to me\nalthough one could call it incorrect",
            CI,
            Ok((
                "CORRECT",
                Some("Looks CORRECT to me\nalthough one could call it incorrect"),
            )),
        );
        check(
            "Comparing correct and incorrect readings, I pick INCORRECT",
            CI,
            Ok((
                "INCORRECT",
                Some("Comparing correct and incorrect readings, I pick INCORRECT"),
            )),
        );
        check(
            "Could be correct or incorrect, hard to say.",
            CI,
            Err("several labels (CORRECT, INCORRECT)"),
        );
    }

    #[test]
    fn errors_quote_what_was_received_truncated() {
        let long = "blah ".repeat(200);
        let err = parse_label(&long, &labels(CI)).unwrap_err();
        assert!(err.contains("received: \"blah blah"), "{err}");
        assert!(err.chars().count() < 400, "{err}");
    }

    #[test]
    fn labels_without_letters_match_exactly() {
        check(" 👍 ", &["👍", "👎"], Ok(("👍", None)));
    }

    fn score(reply: &str) -> Result<(f64, Option<String>), String> {
        parse_score(reply)
    }

    #[test]
    fn scores_in_the_usual_forms() {
        assert_eq!(score("7"), Ok((7.0, None)));
        assert_eq!(score(" 0.8 "), Ok((0.8, None)));
        assert_eq!(score("-1"), Ok((-1.0, None)));
        assert_eq!(score("Score: 7/10"), Ok((7.0, None)));
        assert_eq!(score("85%"), Ok((85.0, None)));
        assert_eq!(
            score("8 out of 10 - clear and correct"),
            Ok((8.0, Some("clear and correct".into())))
        );
        assert_eq!(
            score("Compared 3 facts against 4 references.\nRating: 4"),
            Ok((4.0, Some("Compared 3 facts against 4 references.".into())))
        );
        assert_eq!(
            score("The answer uses gpt4 style; I give it 9"),
            Ok((9.0, Some("The answer uses gpt4 style; I give it 9".into())))
        );
        assert!(score("no idea").unwrap_err().contains("no score"));
        assert!(
            score("between 3 and 4, hard to tell")
                .unwrap_err()
                .contains("several numbers (3, 4)")
        );
    }

    #[test]
    fn verdicts_pick_the_form_by_the_label_list() {
        let v = parse_verdict("Score: 3", &[]).unwrap();
        assert_eq!((v.label, v.score), (None, Some(3.0)));
        let v = parse_verdict("CORRECT", &labels(CI)).unwrap();
        assert_eq!((v.label.as_deref(), v.score), (Some("CORRECT"), None));
    }

    #[test]
    fn label_lists_must_be_distinguishable() {
        assert!(validate_labels(&labels(CI)).is_ok());
        assert!(
            validate_labels(&labels(&["Correct", "correct!"]))
                .unwrap_err()
                .contains("cannot be told apart")
        );
        assert!(validate_labels(&labels(&["A", " "])).is_err());
    }

    fn label_set() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec("[A-Za-z]{1,8}( [A-Za-z]{1,8}){0,2}", 1..5)
            .prop_filter("distinguishable", |ls| validate_labels(ls).is_ok())
    }

    proptest! {
        #[test]
        fn never_panics_on_any_text(reply in ".{0,300}", ls in label_set()) {
            let _ = parse_label(&reply, &ls);
            let _ = parse_score(&reply);
        }

        #[test]
        fn never_panics_on_numeric_noise(reply in "[0-9 ./%:\\-\n]{0,80}|Score[: ]{0,2}[0-9./ ]{0,12}") {
            let _ = parse_score(&reply);
        }

        #[test]
        fn a_reply_that_is_exactly_a_label_parses_to_it(ls in label_set(), pick in any::<prop::sample::Index>()) {
            let label = pick.get(&ls).clone();
            prop_assert_eq!(parse_label(&label, &ls), Ok((label.clone(), None)));
            let shouted = format!("**{}.**", label.to_uppercase());
            prop_assert_eq!(parse_label(&shouted, &ls).map(|(l, _)| l), Ok(label.clone()));
        }

        #[test]
        fn a_label_then_prose_without_labels_parses_to_it(
            ls in label_set(),
            pick in any::<prop::sample::Index>(),
            prose in "[0-9 ,.]{0,40}",
        ) {
            let label = pick.get(&ls).clone();
            let reply = format!("{label}\n{prose}");
            prop_assert_eq!(parse_label(&reply, &ls).map(|(l, _)| l), Ok(label));
        }

        #[test]
        fn a_number_alone_parses_to_itself(n in -1000.0f64..1000.0) {
            let text = format!("{n}");
            prop_assert_eq!(parse_score(&text).map(|(s, _)| s), Ok(text.parse::<f64>().unwrap()));
        }
    }
}
