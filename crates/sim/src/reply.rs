//! Deterministic replies derived from the prompt, so an evaluator gets a
//! label it can parse and a test can predict every output. The rules are
//! the crate documentation's "Replies" section; in order of precedence:
//! judge (a list of labels), score (a range), arithmetic, free text.

use crate::config::{MAX_TEXT_TOKENS, ReplyConfig};
use crate::rng::{Rng, hash_text};

/// A made-up reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The reply text.
    pub text: String,
    /// Which rule made it.
    pub kind: ReplyKind,
    /// Whether it was cut to the request's `max_tokens` (finish reason
    /// `length` / `max_tokens` instead of `stop` / `end_turn`).
    pub truncated: bool,
}

impl Reply {
    /// Completion tokens, estimated as for the prompt.
    pub fn completion_tokens(&self) -> u64 {
        estimate_tokens(&self.text)
    }
}

/// Which rule produced a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// A judge prompt: one of its labels.
    Judge,
    /// A score prompt: a number in its range.
    Score,
    /// An arithmetic question: its result (or a wrong one, by `wrong_rate`).
    Arithmetic,
    /// Anything else: deterministic filler text.
    Text,
}

/// Tokens in a text, estimated as characters / 4 rounded up (what the
/// simulator reports as usage and charges to token limits).
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// The reply to `prompt` (all message texts joined by newlines, the system
/// prompt first) for a request that allows `max_tokens`.
pub fn reply(prompt: &str, max_tokens: Option<u32>, config: &ReplyConfig) -> Reply {
    let tokens = lex(prompt);
    let hash = hash_text(prompt);
    let (kind, text) = if let Some(labels) = judge_labels(&tokens) {
        (ReplyKind::Judge, judge_reply(prompt, &labels, hash))
    } else if let Some((low, high)) = score_range(&tokens) {
        (ReplyKind::Score, score_reply(prompt, low, high, hash))
    } else if let Some(answer) = arithmetic(&tokens) {
        let answer = if unit(hash) < config.wrong_rate {
            wrong(answer, hash)
        } else {
            answer
        };
        (ReplyKind::Arithmetic, answer.to_string())
    } else {
        let target = config
            .text_tokens
            .or(max_tokens)
            .unwrap_or(config.default_text_tokens)
            .min(MAX_TEXT_TOKENS);
        (ReplyKind::Text, filler(hash, target as usize * 4))
    };
    let (text, truncated) = match max_tokens {
        Some(max) => cut(text, max as usize * 4),
        None => (text, false),
    };
    Reply {
        text,
        kind,
        truncated,
    }
}

fn unit(hash: u64) -> f64 {
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// A wrong answer near the right one: off by 1 to 5, either way.
fn wrong(answer: i64, hash: u64) -> i64 {
    let offset = 1 + (hash % 5) as i64;
    let offset = if hash & (1 << 20) == 0 {
        offset
    } else {
        -offset
    };
    answer
        .checked_add(offset)
        .or_else(|| answer.checked_sub(offset))
        .unwrap_or(0)
}

fn cut(text: String, max_chars: usize) -> (String, bool) {
    match text.char_indices().nth(max_chars) {
        Some((at, _)) => (text[..at].to_owned(), true),
        None => (text, false),
    }
}

// ---------------------------------------------------------------- lexing

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok<'a> {
    /// Letters, digits, `_`, `'` and inner hyphens, starting with a letter or `_`.
    Word(&'a str),
    /// Digits, with an optional decimal part.
    Num(&'a str),
    /// Any other single non-space character.
    Punct(char),
}

#[derive(Clone, Copy, Debug)]
struct Token<'a> {
    tok: Tok<'a>,
    start: usize,
    end: usize,
}

fn lex(text: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c.is_whitespace() {
            continue;
        }
        let mut end = start + c.len_utf8();
        let tok = if c.is_alphabetic() || c == '_' {
            let mut prev = c;
            while let Some(&(i, next)) = chars.peek() {
                let hyphen = next == '-'
                    && prev.is_alphabetic()
                    && text[i + 1..]
                        .chars()
                        .next()
                        .is_some_and(char::is_alphanumeric);
                if !(next.is_alphanumeric() || next == '_' || next == '\'' || hyphen) {
                    break;
                }
                prev = next;
                end = i + next.len_utf8();
                chars.next();
            }
            Tok::Word(&text[start..end])
        } else if c.is_ascii_digit() {
            let mut seen_point = false;
            while let Some(&(i, next)) = chars.peek() {
                let point = next == '.'
                    && !seen_point
                    && text[i + 1..]
                        .chars()
                        .next()
                        .is_some_and(|d| d.is_ascii_digit());
                if !(next.is_ascii_digit() || point) {
                    break;
                }
                seen_point |= point;
                end = i + 1;
                chars.next();
            }
            Tok::Num(&text[start..end])
        } else {
            Tok::Punct(c)
        };
        tokens.push(Token { tok, start, end });
    }
    tokens
}

fn word_is(token: Option<&Token<'_>>, words: &[&str]) -> bool {
    matches!(token, Some(Token { tok: Tok::Word(w), .. })
        if words.iter().any(|x| w.eq_ignore_ascii_case(x)))
}

// ---------------------------------------------------------------- judge

/// Words after which a list of labels is expected.
const CUES: &[&str] = &[
    "answer", "respond", "reply", "output", "return", "say", "choose", "pick", "select", "label",
    "classify", "verdict", "write",
];
/// Words that may stand between a cue and the labels (lower case only, so
/// a label "A" is never taken for the article).
const FILLERS: &[&str] = &[
    "with",
    "only",
    "exactly",
    "either",
    "just",
    "using",
    "as",
    "one",
    "of",
    "the",
    "a",
    "single",
    "word",
    "is",
    "must",
    "be",
    "your",
    "it",
    "following",
    "labels",
    "options",
];

fn is_label(word: &str) -> bool {
    word.chars().any(|c| c.is_ascii_uppercase())
        && word
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn is_quote(tok: Tok<'_>) -> bool {
    matches!(
        tok,
        Tok::Punct('"' | '\'' | '`' | '“' | '”' | '‘' | '’' | '*')
    )
}

/// The first list of two or more capitalised labels right after a cue.
fn judge_labels<'a>(tokens: &[Token<'a>]) -> Option<Vec<&'a str>> {
    for (i, token) in tokens.iter().enumerate() {
        let Tok::Word(word) = token.tok else { continue };
        let cue = CUES.iter().any(|c| word.eq_ignore_ascii_case(c))
            || (word.eq_ignore_ascii_case("of") && i > 0 && word_is(tokens.get(i - 1), &["one"]));
        if !cue {
            continue;
        }
        let mut j = i + 1;
        let mut skipped = 0;
        while let Some(next) = tokens.get(j) {
            let skip = match next.tok {
                Tok::Punct(':' | '(' | '-' | '–') => true,
                Tok::Word(w) => skipped < 6 && FILLERS.contains(&w),
                t => is_quote(t),
            };
            if !skip {
                break;
            }
            skipped += usize::from(matches!(next.tok, Tok::Word(_)));
            j += 1;
        }
        let labels = label_list(tokens, j);
        if labels.len() >= 2 {
            return Some(labels);
        }
    }
    None
}

/// `LABEL (SEP LABEL)*` from `at`; SEP is `,`, `, or`, `or`, `/` or `|`.
fn label_list<'a>(tokens: &[Token<'a>], mut at: usize) -> Vec<&'a str> {
    let mut labels = Vec::new();
    let skip_quotes = |at: &mut usize| {
        while tokens.get(*at).is_some_and(|t| is_quote(t.tok)) {
            *at += 1;
        }
    };
    loop {
        skip_quotes(&mut at);
        match tokens.get(at).map(|t| t.tok) {
            Some(Tok::Word(w)) if is_label(w) => labels.push(w),
            _ => break,
        }
        at += 1;
        skip_quotes(&mut at);
        match tokens.get(at).map(|t| t.tok) {
            Some(Tok::Punct(',')) => {
                at += 1;
                if word_is(tokens.get(at), &["or"]) {
                    at += 1;
                }
            }
            Some(Tok::Punct('/' | '|')) => at += 1,
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("or") => at += 1,
            _ => break,
        }
    }
    labels
}

fn judge_reply(prompt: &str, labels: &[&str], hash: u64) -> String {
    let (label, explanation) = match expected_and_given(prompt) {
        Some((expected, given)) if same(expected, given) => {
            (labels[0], "The answer agrees with the reference.")
        }
        Some(_) => (labels[1], "The answer differs from the reference."),
        None => (
            labels[(hash % labels.len() as u64) as usize],
            "Chosen by the simulator from the prompt.",
        ),
    };
    // The explanation must not name a label, or a parser that looks for
    // exactly one label would find two.
    let lexed = lex(explanation);
    let names_label = lexed
        .iter()
        .any(|t| matches!(t.tok, Tok::Word(w) if labels.iter().any(|l| l.eq_ignore_ascii_case(w))));
    if names_label {
        label.to_owned()
    } else {
        format!("{label}\n{explanation}")
    }
}

// ---------------------------------------------------------------- expected / given

const GIVEN_WORDS: &[&str] = &["got", "given", "actual"];

/// The values after the last `expected` that a `got` / `given` / `actual`
/// follows, and after that word.
fn expected_and_given(prompt: &str) -> Option<(&str, &str)> {
    let lower = prompt.to_ascii_lowercase();
    let expected = word_positions(&lower, "expected");
    expected.iter().rev().find_map(|&e| {
        let after = e + "expected".len();
        let (g, word) = GIVEN_WORDS
            .iter()
            .filter_map(|w| word_positions(&lower[after..], w).first().map(|p| (*p, *w)))
            .min()?;
        let expected = value(&prompt[after..after + g]);
        let given = value(&prompt[after + g + word.len()..]);
        (!expected.is_empty()).then_some((expected, given))
    })
}

/// Byte offsets of `word` in `text` as a whole word.
fn word_positions(text: &str, word: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let boundary = |i: Option<&u8>| i.is_none_or(|b| !b.is_ascii_alphanumeric());
    text.match_indices(word)
        .map(|(i, _)| i)
        .filter(|&i| {
            boundary(i.checked_sub(1).and_then(|p| bytes.get(p)))
                && boundary(bytes.get(i + word.len()))
        })
        .collect()
}

/// The value at the start of `raw`: after leading `:`/`=`, up to a newline,
/// `;` or the end of a sentence; a short `word:` prefix (`answer:`) is
/// dropped; quotes and trailing punctuation are trimmed.
fn value(raw: &str) -> &str {
    let raw = raw.trim_start_matches(|c: char| c.is_whitespace() || c == ':' || c == '=');
    let mut end = raw.len();
    for (i, c) in raw.char_indices() {
        let sentence_end = c == '.' && raw[i + 1..].chars().next().is_none_or(char::is_whitespace);
        if c == '\n' || c == ';' || sentence_end {
            end = i;
            break;
        }
    }
    let mut v = &raw[..end];
    if let Some((prefix, rest)) = v.split_once(':') {
        let words = prefix.split_whitespace().count();
        if (1..=2).contains(&words) && prefix.chars().all(|c| c.is_alphabetic() || c == ' ') {
            v = rest;
        }
    }
    v.trim_matches(|c: char| {
        c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '.' | ',' | ';' | ':' | '!')
    })
}

fn same(a: &str, b: &str) -> bool {
    a.trim().to_lowercase() == b.trim().to_lowercase()
}

// ---------------------------------------------------------------- score

/// A range `from N to M` or `between N and M` (also with `-`), or
/// `of N to M` / `of N-M` in a prompt that speaks of a score, rate,
/// rating, grade or scale ("on a scale of 1-10").
fn score_range(tokens: &[Token<'_>]) -> Option<(i64, i64)> {
    let scoring = tokens.iter().any(|t| {
        word_is(
            Some(t),
            &["score", "scores", "rate", "rating", "grade", "scale"],
        )
    });
    tokens.windows(4).find_map(|w| {
        let opener =
            word_is(w.first(), &["from", "between"]) || (scoring && word_is(w.first(), &["of"]));
        let (Tok::Num(a), Tok::Num(b)) = (w[1].tok, w[3].tok) else {
            return None;
        };
        let joiner = word_is(w.get(2), &["to", "and"]) || matches!(w[2].tok, Tok::Punct('-' | '–'));
        let (low, high) = (a.parse::<i64>().ok()?, b.parse::<i64>().ok()?);
        (opener && joiner && low < high && high - low <= 1_000_000).then_some((low, high))
    })
}

fn score_reply(prompt: &str, low: i64, high: i64, hash: u64) -> String {
    let score = match expected_and_given(prompt) {
        Some((expected, given)) if same(expected, given) => high,
        Some(_) => low,
        // high - low is at most a million (checked above), so the sum fits.
        None => low + (hash % (high - low + 1) as u64) as i64,
    };
    format!("{score}\nA deterministic score from the simulator.")
}

// ---------------------------------------------------------------- arithmetic

/// The result of the last `a OP b` asked about: preceded by `is`, `what's`,
/// `compute`, `calculate`, `evaluate` or `solve`, or followed by `?` or `=`.
fn arithmetic(tokens: &[Token<'_>]) -> Option<i64> {
    let mut found = None;
    let mut i = 0;
    while i < tokens.len() {
        let Some((a, after_a)) = operand(tokens, i) else {
            i += 1;
            continue;
        };
        let op = tokens.get(after_a).and_then(|t| operator(t.tok));
        let rhs = op.and_then(|_| operand(tokens, after_a + 1));
        if let (Some(op), Some((b, end))) = (op, rhs) {
            let asked = (i > 0
                && word_is(
                    tokens.get(i - 1),
                    &[
                        "is",
                        "what's",
                        "whats",
                        "compute",
                        "calculate",
                        "evaluate",
                        "solve",
                    ],
                ))
                || matches!(tokens.get(end).map(|t| t.tok), Some(Tok::Punct('?' | '=')));
            let result = match op {
                '+' => a.checked_add(b),
                '-' => a.checked_sub(b),
                _ => a.checked_mul(b),
            };
            if asked && result.is_some() {
                found = result;
            }
        }
        i = after_a;
    }
    found
}

/// An integer at `at`, with a minus sign stuck to it unless the minus
/// follows a number (then it is the operator). Returns the value and the
/// index after it.
fn operand(tokens: &[Token<'_>], at: usize) -> Option<(i64, usize)> {
    let token = tokens.get(at)?;
    match token.tok {
        Tok::Num(digits) => Some((digits.parse().ok()?, at + 1)),
        Tok::Punct('-' | '−') => {
            let next = tokens.get(at + 1)?;
            let after_number = at > 0 && matches!(tokens[at - 1].tok, Tok::Num(_));
            match next.tok {
                Tok::Num(digits) if next.start == token.end && !after_number => {
                    Some((digits.parse::<i64>().ok()?.checked_neg()?, at + 2))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

fn operator(tok: Tok<'_>) -> Option<char> {
    match tok {
        Tok::Punct('+') => Some('+'),
        Tok::Punct('-' | '−') => Some('-'),
        Tok::Punct('×' | '*') => Some('×'),
        Tok::Word(w) if w.eq_ignore_ascii_case("plus") => Some('+'),
        Tok::Word(w) if w.eq_ignore_ascii_case("minus") => Some('-'),
        Tok::Word(w) if w.eq_ignore_ascii_case("times") || w == "x" => Some('×'),
        _ => None,
    }
}

// ---------------------------------------------------------------- filler

const VOCABULARY: [&str; 48] = [
    "the",
    "model",
    "answers",
    "with",
    "a",
    "steady",
    "stream",
    "of",
    "plain",
    "words",
    "that",
    "carry",
    "no",
    "meaning",
    "but",
    "fill",
    "space",
    "while",
    "tests",
    "watch",
    "every",
    "token",
    "arrive",
    "in",
    "order",
    "simulated",
    "reply",
    "river",
    "runs",
    "quietly",
    "past",
    "stone",
    "and",
    "reed",
    "under",
    "grey",
    "sky",
    "until",
    "evening",
    "light",
    "settles",
    "over",
    "field",
    "slow",
    "calm",
    "water",
    "it",
    "is",
];

/// About `target_chars` of lower-case words in sentences (no digits and no
/// capitals, so no score or label can be read into it). Never empty.
fn filler(seed: u64, target_chars: usize) -> String {
    let mut rng = Rng::new(seed);
    let mut text = String::with_capacity(target_chars + 16);
    let mut in_sentence = 0;
    loop {
        let word = VOCABULARY[rng.below(VOCABULARY.len() as u64) as usize];
        let sep = usize::from(!text.is_empty());
        if !text.is_empty() && text.len() + sep + word.len() + 1 > target_chars {
            break;
        }
        if sep == 1 {
            text.push(' ');
        }
        text.push_str(word);
        in_sentence += 1;
        if in_sentence >= 6 + rng.below(8) {
            text.push('.');
            in_sentence = 0;
        }
    }
    if !text.ends_with('.') {
        text.push('.');
    }
    text
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn say(prompt: &str) -> Reply {
        reply(prompt, None, &ReplyConfig::default())
    }

    /// Table of prompt → (kind, first line of the reply).
    #[test]
    fn documented_examples() {
        let cases: &[(&str, ReplyKind, &str)] = &[
            ("What is 17 + 25?", ReplyKind::Arithmetic, "42"),
            ("What is 17 − 25?", ReplyKind::Arithmetic, "-8"),
            ("what's 6 × 7", ReplyKind::Arithmetic, "42"),
            ("Compute 12 * -3", ReplyKind::Arithmetic, "-36"),
            ("3 x 4 = ?", ReplyKind::Arithmetic, "12"),
            ("What is 10 minus 4?", ReplyKind::Arithmetic, "6"),
            ("What is -5 + 3?", ReplyKind::Arithmetic, "-2"),
            (
                "Q: 1 + 1 = 2. Now: what is 20-5?",
                ReplyKind::Arithmetic,
                "15",
            ),
            (
                "Expected 42; got 41. Answer CORRECT or INCORRECT.",
                ReplyKind::Judge,
                "INCORRECT",
            ),
            (
                "Expected 42; got 42. Answer CORRECT or INCORRECT.",
                ReplyKind::Judge,
                "CORRECT",
            ),
            (
                "Question: What is 17 + 25?\nExpected: Paris\nGot:  paris. \nRespond with only \"CORRECT\" or \"INCORRECT\".",
                ReplyKind::Judge,
                "CORRECT",
            ),
            (
                "Compare the output with the expected answer.\nExpected answer: 7\nActual: 8\nYour verdict: PASS / FAIL",
                ReplyKind::Judge,
                "FAIL",
            ),
            (
                "Expected: NOT-SURE\nGot: not-sure\nAnswer with one of: MATCH, NO-MATCH, UNKNOWN",
                ReplyKind::Judge,
                "MATCH",
            ),
            (
                "Expected 3.5, got 3.5. Rate it from 1 to 10.",
                ReplyKind::Score,
                "10",
            ),
            (
                "Expected 3.5, got 4. Score from 0 to 5.",
                ReplyKind::Score,
                "0",
            ),
            (
                "Expected: blue\nGot: Blue\nHow close is it, between 1 and 4?",
                ReplyKind::Score,
                "4",
            ),
            (
                "Expected: blue\nGot: red\nOn a scale of 1-10, how close is it?",
                ReplyKind::Score,
                "1",
            ),
        ];
        for (prompt, kind, first_line) in cases {
            let r = say(prompt);
            assert_eq!(r.kind, *kind, "{prompt}");
            assert_eq!(
                r.text.lines().next(),
                Some(*first_line),
                "{prompt}: {}",
                r.text
            );
        }
    }

    #[test]
    fn plain_text_is_not_arithmetic_or_a_judge() {
        for prompt in [
            "Write 2-3 paragraphs about rivers.",
            "The USA or UK: which is larger?",
            "The movie is of 1-2 hours.",
            "Tell me about 17 + 25 reasons.",
            "",
            "   ",
        ] {
            assert_eq!(say(prompt).kind, ReplyKind::Text, "{prompt}");
        }
    }

    #[test]
    fn a_judge_without_values_picks_a_label_by_hash_and_explains() {
        let r = say("Classify the tone. Answer one of: A, B, C");
        assert_eq!(r.kind, ReplyKind::Judge);
        let first = r.text.lines().next().unwrap();
        assert!(["A", "B", "C"].contains(&first), "{}", r.text);
        assert_eq!(r.text.lines().count(), 2);
    }

    #[test]
    fn explanation_is_dropped_when_it_would_name_a_label() {
        let r = say("Expected 1; got 2. Answer REFERENCE or THE");
        assert_eq!(r.text, "THE");
    }

    #[test]
    fn text_follows_max_tokens_then_config_and_is_cut_to_max_tokens() {
        let config = ReplyConfig::default();
        let r = reply("Tell me a story.", Some(100), &config);
        assert_eq!(r.kind, ReplyKind::Text);
        assert!(!r.truncated);
        let tokens = r.completion_tokens();
        assert!((90..=100).contains(&tokens), "{tokens}");
        let r = reply("Tell me a story.", None, &config);
        assert!(
            (58..=64).contains(&r.completion_tokens()),
            "{}",
            r.completion_tokens()
        );
        let fixed = ReplyConfig {
            text_tokens: Some(10),
            ..config.clone()
        };
        let r = reply("Tell me a story.", Some(500), &fixed);
        assert!((7..=10).contains(&r.completion_tokens()));
        let judge = reply(
            "Expected 1; got 2. Answer CORRECT or INCORRECT",
            Some(1),
            &config,
        );
        assert_eq!(judge.text, "INCO");
        assert!(judge.truncated);
    }

    #[test]
    fn wrong_rate_one_is_always_wrong_and_near() {
        let config = ReplyConfig {
            wrong_rate: 1.0,
            ..ReplyConfig::default()
        };
        for a in 0..50 {
            let r = reply(&format!("What is {a} + 10?"), None, &config);
            let got: i64 = r.text.parse().unwrap();
            assert_ne!(got, a + 10);
            assert!((got - (a + 10)).abs() <= 5);
        }
    }

    #[test]
    fn wrong_rate_picks_about_that_share_of_prompts() {
        let config = ReplyConfig {
            wrong_rate: 0.3,
            ..ReplyConfig::default()
        };
        let wrong = (0..2000)
            .filter(|a| {
                reply(&format!("What is {a} + 1?"), None, &config).text != (a + 1).to_string()
            })
            .count();
        assert!((500..700).contains(&wrong), "{wrong}");
    }

    #[test]
    fn token_estimate_is_chars_over_four_rounded_up() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abc"), 1);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("ééééé"), 2);
    }

    proptest! {
        #[test]
        fn any_prompt_gets_a_reply_and_the_same_one_twice(prompt in ".{0,300}", max in proptest::option::of(1u32..200)) {
            let config = ReplyConfig { wrong_rate: 0.5, ..ReplyConfig::default() };
            let a = reply(&prompt, max, &config);
            let b = reply(&prompt, max, &config);
            prop_assert_eq!(&a, &b);
            if let Some(max) = max {
                prop_assert!(a.completion_tokens() <= u64::from(max));
            }
        }

        #[test]
        fn arithmetic_is_right(a in -100_000i64..100_000, b in -100_000i64..100_000, op in 0usize..3) {
            let (symbol, want) = [("+", a + b), ("-", a - b), ("×", a * b)][op];
            let r = say(&format!("What is {a} {symbol} {b}?"));
            prop_assert_eq!(r.kind, ReplyKind::Arithmetic);
            prop_assert_eq!(r.text, want.to_string());
        }

        #[test]
        fn judge_compares_expected_and_given(
            labels in prop::collection::vec("[A-Z][A-Z_]{0,8}", 2..5),
            expected in "[a-z0-9]{1,8}",
            given in "[a-z0-9]{1,8}",
            colon in any::<bool>(),
        ) {
            // "OR" would read as a separator; the value words as keywords.
            prop_assume!(!labels.iter().any(|l| l == "OR"));
            for v in [&expected, &given] {
                prop_assume!(!["got", "given", "actual", "expected"].contains(&v.as_str()));
            }
            let list = labels.join(", ");
            let prompt = if colon {
                format!("Expected: {expected}\nGot: {given}\nAnswer one of: {list}")
            } else {
                format!("Expected {expected}; got {given}. Respond with {list}.")
            };
            let r = say(&prompt);
            prop_assert_eq!(r.kind, ReplyKind::Judge);
            let want = if expected == given { &labels[0] } else { &labels[1] };
            prop_assert_eq!(r.text.lines().next(), Some(want.as_str()));
        }

        #[test]
        fn score_is_in_range(low in 0i64..50, span in 1i64..100, noise in "[a-z ]{0,40}") {
            let high = low + span;
            let r = say(&format!("{noise} Give a score from {low} to {high}."));
            prop_assert_eq!(r.kind, ReplyKind::Score);
            let n: i64 = r.text.lines().next().unwrap().parse().unwrap();
            prop_assert!((low..=high).contains(&n));
        }
    }
}
