//! Prompt templates: `{{…}}` placeholders in message texts, filled from an
//! example (and, for evaluators, the task's output). Usable on its own.
//!
//! | placeholder | value |
//! |---|---|
//! | `{{input}}` | the whole input object, as compact JSON |
//! | `{{input.a.b}}` | a field of the input (nested paths; array items by index: `input.items.0`) |
//! | `{{expected}}`, `{{expected.field}}` | the expected answer or one of its fields |
//! | `{{metadata}}`, `{{metadata.field}}` | the example's metadata or one of its fields |
//! | `{{output}}` | the task's output (evaluators only) |
//!
//! Strings are inserted as they are, other JSON values compactly. Spaces
//! inside the braces are allowed (`{{ input.question }}`). A placeholder whose
//! field the example lacks is an error naming it, found before any call is
//! made. There is no escape for a literal `{{`.
//!
//! ```
//! use runnel_core::ExampleData;
//! use runnel_providers::template::{render, Vars};
//! let example = ExampleData {
//!     input: serde_json::json!({"question": "2+2?", "tags": ["math"]}),
//!     expected: Some(serde_json::json!("4")),
//!     metadata: serde_json::Value::Null,
//! };
//! let vars = Vars::task(&example);
//! assert_eq!(
//!     render("Q: {{input.question}} {{input.tags}} ({{expected}})", &vars).unwrap(),
//!     r#"Q: 2+2? ["math"] (4)"#
//! );
//! let err = render("{{input.answer}}", &vars).unwrap_err();
//! assert_eq!(err.to_string(), "`{{input.answer}}`: the example has no field `input.answer`");
//! ```

use std::fmt;

use runnel_core::{ExampleData, Message};
use serde_json::Value;

/// Roles a message may have.
pub const ROLES: &[&str] = &["system", "user", "assistant", "developer"];

/// What a placeholder reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Root {
    /// The example's input.
    Input,
    /// The example's expected answer.
    Expected,
    /// The example's metadata.
    Metadata,
    /// The task's output (evaluators only).
    Output,
}

impl Root {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "input" => Some(Root::Input),
            "expected" => Some(Root::Expected),
            "metadata" => Some(Root::Metadata),
            "output" => Some(Root::Output),
            _ => None,
        }
    }

    /// The name written in templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Root::Input => "input",
            Root::Expected => "expected",
            Root::Metadata => "metadata",
            Root::Output => "output",
        }
    }
}

/// One `{{root.a.b}}` placeholder.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Placeholder {
    /// What it reads from.
    pub root: Root,
    /// The field path below the root (empty for the whole value).
    pub path: Vec<String>,
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.root.as_str())?;
        for part in &self.path {
            write!(f, ".{part}")?;
        }
        Ok(())
    }
}

/// A piece of a parsed template.
#[derive(Clone, Debug, PartialEq)]
pub enum Segment {
    /// Literal text.
    Text(String),
    /// A placeholder to fill.
    Field(Placeholder),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    segments: Vec<Segment>,
}

/// What a template may read: one example and, for evaluators, the output.
#[derive(Clone, Copy, Debug)]
pub struct Vars<'a> {
    /// The example.
    pub example: &'a ExampleData,
    /// The task's output; `Some` only when rendering an evaluator.
    pub output: Option<&'a str>,
}

impl<'a> Vars<'a> {
    /// Variables of a task call.
    pub fn task(example: &'a ExampleData) -> Self {
        Self {
            example,
            output: None,
        }
    }

    /// Variables of an evaluator call.
    pub fn eval(example: &'a ExampleData, output: &'a str) -> Self {
        Self {
            example,
            output: Some(output),
        }
    }
}

/// Something wrong with a template: a syntax error, or a reference the data
/// cannot fill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateProblem {
    /// Index of the message in a message list (`None` for a lone template).
    pub message: Option<usize>,
    /// What is wrong.
    pub kind: ProblemKind,
}

/// The kinds of [`TemplateProblem`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// A `{{` without a matching `}}`, at this byte offset.
    Unclosed(usize),
    /// `{{}}`, or a path with an empty part (`input..a`, `input.`); holds
    /// the text between the braces.
    Malformed(String),
    /// A placeholder whose first name is not `input`, `expected`,
    /// `metadata` or `output`; holds the text between the braces.
    UnknownRoot(String),
    /// `{{output}}` in a task template (only evaluators see an output).
    OutputOutsideEvaluator,
    /// `{{output.x}}`: the output is text and has no fields; holds the text
    /// between the braces.
    OutputHasNoFields(String),
    /// A field the example (or, in validation, every sampled example)
    /// lacks; holds the placeholder, e.g. `input.question`.
    Missing(String),
    /// A message role other than `system`, `user`, `assistant`, `developer`.
    UnknownRole(String),
}

impl From<ProblemKind> for TemplateProblem {
    fn from(kind: ProblemKind) -> Self {
        Self {
            message: None,
            kind,
        }
    }
}

impl TemplateProblem {
    fn at(self, index: usize) -> Self {
        Self {
            message: Some(index),
            ..self
        }
    }
}

impl fmt::Display for TemplateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(i) = self.message {
            write!(f, "messages[{i}]: ")?;
        }
        match &self.kind {
            ProblemKind::Unclosed(offset) => {
                write!(f, "`{{{{` at byte {offset} is not closed by `}}}}`")
            }
            ProblemKind::Malformed(placeholder) => {
                write!(f, "`{{{{{placeholder}}}}}` is not a valid placeholder")
            }
            ProblemKind::UnknownRoot(placeholder) => write!(
                f,
                "`{{{{{placeholder}}}}}`: unknown name (use input, expected, metadata or output)"
            ),
            ProblemKind::OutputOutsideEvaluator => {
                f.write_str("`{{output}}` is only available to evaluators")
            }
            ProblemKind::OutputHasNoFields(placeholder) => write!(
                f,
                "`{{{{{placeholder}}}}}`: the output is text and has no fields (use `{{{{output}}}}`)"
            ),
            ProblemKind::Missing(placeholder) => write!(
                f,
                "`{{{{{placeholder}}}}}`: the example has no field `{placeholder}`"
            ),
            ProblemKind::UnknownRole(role) => write!(
                f,
                "unknown role `{role}` (use system, user, assistant or developer)"
            ),
        }
    }
}

impl std::error::Error for TemplateProblem {}

impl Template {
    /// Parses a template text.
    pub fn parse(text: &str) -> Result<Self, TemplateProblem> {
        let mut segments = Vec::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                segments.push(Segment::Text(rest[..open].to_owned()));
            }
            let inner_start = open + 2;
            let close = rest[inner_start..]
                .find("}}")
                .map(|c| c + inner_start)
                .filter(|&c| !rest[inner_start..c].contains("{{"))
                .ok_or(ProblemKind::Unclosed(offset + open))?;
            segments.push(Segment::Field(parse_placeholder(
                &rest[inner_start..close],
            )?));
            offset += close + 2;
            rest = &rest[close + 2..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Text(rest.to_owned()));
        }
        Ok(Self { segments })
    }

    /// The pieces of the template, in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The placeholders, in order of appearance (repeats included).
    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Field(p) => Some(p),
            Segment::Text(_) => None,
        })
    }

    /// Fills the placeholders from `vars`.
    pub fn render(&self, vars: &Vars<'_>) -> Result<String, TemplateProblem> {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Text(t) => out.push_str(t),
                Segment::Field(p) => match lookup(p, vars)? {
                    Found::Text(t) => out.push_str(t),
                    Found::Json(Value::String(s)) => out.push_str(s),
                    Found::Json(v) => out.push_str(&v.to_string()),
                },
            }
        }
        Ok(out)
    }
}

fn parse_placeholder(inner: &str) -> Result<Placeholder, TemplateProblem> {
    let trimmed = inner.trim();
    let malformed = || ProblemKind::Malformed(trimmed.to_owned());
    let mut parts = trimmed.split('.');
    let root_name = parts.next().unwrap_or_default();
    if root_name.is_empty() {
        return Err(malformed().into());
    }
    let root =
        Root::parse(root_name).ok_or_else(|| ProblemKind::UnknownRoot(trimmed.to_owned()))?;
    let path: Vec<String> = parts.map(str::to_owned).collect();
    if path.iter().any(|p| p.trim().is_empty() || p.contains('{')) {
        return Err(malformed().into());
    }
    if root == Root::Output && !path.is_empty() {
        return Err(ProblemKind::OutputHasNoFields(trimmed.to_owned()).into());
    }
    Ok(Placeholder { root, path })
}

enum Found<'a> {
    Text(&'a str),
    Json(&'a Value),
}

fn lookup<'a>(p: &Placeholder, vars: &Vars<'a>) -> Result<Found<'a>, TemplateProblem> {
    let missing = || TemplateProblem::from(ProblemKind::Missing(p.to_string()));
    let base: &Value = match p.root {
        Root::Output => {
            return vars
                .output
                .map(Found::Text)
                .ok_or(ProblemKind::OutputOutsideEvaluator.into());
        }
        Root::Input => &vars.example.input,
        Root::Metadata => &vars.example.metadata,
        Root::Expected => vars.example.expected.as_ref().ok_or_else(missing)?,
    };
    // An absent input or metadata object is stored as null.
    if base.is_null() && p.root != Root::Expected {
        return Err(missing());
    }
    let mut value = base;
    for part in &p.path {
        value = match value {
            Value::Object(map) => map.get(part.as_str()),
            Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        }
        .ok_or_else(missing)?;
    }
    Ok(Found::Json(value))
}

/// Parses and fills one template text.
pub fn render(text: &str, vars: &Vars<'_>) -> Result<String, TemplateProblem> {
    Template::parse(text)?.render(vars)
}

/// Fills every message of a prompt; the error names the message's index.
pub fn render_messages(
    messages: &[Message],
    vars: &Vars<'_>,
) -> Result<Vec<Message>, TemplateProblem> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            Ok(Message {
                role: m.role.clone(),
                content: render(&m.content, vars).map_err(|e| e.at(i))?,
            })
        })
        .collect()
}

/// Checks a prompt when an experiment or evaluator is created: syntax
/// (unclosed `{{`, unknown names, `{{output}}` outside evaluators), roles,
/// and — when `sample` is not empty — placeholders that no sampled example
/// can fill. An empty sample checks syntax only (examples may be added to an
/// empty dataset later). Returns every problem found, in message order.
///
/// ```
/// use runnel_core::{ExampleData, Message};
/// use runnel_providers::template::validate;
/// let messages = vec![Message { role: "user".into(), content: "{{input.q}} {{input.x}}".into() }];
/// let sample = vec![ExampleData { input: serde_json::json!({"q": "hi"}), ..Default::default() }];
/// let problems = validate(&messages, false, &sample);
/// assert_eq!(problems.len(), 1);
/// assert_eq!(problems[0].to_string(),
///     "messages[0]: `{{input.x}}`: the example has no field `input.x`");
/// ```
pub fn validate(
    messages: &[Message],
    evaluator: bool,
    sample: &[ExampleData],
) -> Vec<TemplateProblem> {
    let mut problems = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        if !ROLES.contains(&message.role.as_str()) {
            problems
                .push(TemplateProblem::from(ProblemKind::UnknownRole(message.role.clone())).at(i));
        }
        let template = match Template::parse(&message.content) {
            Ok(t) => t,
            Err(e) => {
                problems.push(e.at(i));
                continue;
            }
        };
        let mut seen: Vec<&Placeholder> = Vec::new();
        for p in template.placeholders() {
            if seen.contains(&p) {
                continue;
            }
            seen.push(p);
            if p.root == Root::Output {
                if !evaluator {
                    problems.push(TemplateProblem::from(ProblemKind::OutputOutsideEvaluator).at(i));
                }
                continue;
            }
            let filled = |example: &ExampleData| {
                lookup(
                    p,
                    &Vars {
                        example,
                        output: None,
                    },
                )
                .is_ok()
            };
            if !sample.is_empty() && !sample.iter().any(filled) {
                problems.push(TemplateProblem::from(ProblemKind::Missing(p.to_string())).at(i));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn example() -> ExampleData {
        ExampleData {
            input: json!({"q": "why?", "n": 3, "nested": {"a": {"b": [10, {"c": "deep"}]}}}),
            expected: Some(json!({"answer": "because", "score": 1.5})),
            metadata: json!({"source": "wiki"}),
        }
    }

    fn check(template: &str, expected: &str) {
        let ex = example();
        let got = render(template, &Vars::eval(&ex, "the output"));
        assert_eq!(got.as_deref(), Ok(expected), "{template}");
    }

    fn check_err(template: &str, expected: &str) {
        let ex = example();
        let got = render(template, &Vars::task(&ex)).unwrap_err();
        assert_eq!(got.to_string(), expected, "{template}");
    }

    #[test]
    fn fills_every_kind_of_placeholder() {
        check("plain text", "plain text");
        check("{{input.q}}", "why?");
        check("{{ input.n }}!", "3!");
        check("{{input.nested.a.b.1.c}}", "deep");
        check("{{input.nested.a.b}}", r#"[10,{"c":"deep"}]"#);
        check("{{expected}}", r#"{"answer":"because","score":1.5}"#);
        check("{{expected.answer}} {{expected.score}}", "because 1.5");
        check("{{metadata.source}}", "wiki");
        check("[{{output}}]", "[the output]");
        check("{ {{input.n}} }", "{ 3 }");
        check("}} stray closers }}", "}} stray closers }}");
        let input = render("{{input}}", &Vars::task(&example())).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&input).unwrap(),
            example().input
        );
    }

    #[test]
    fn names_what_is_wrong() {
        check_err(
            "{{input.missing}}",
            "`{{input.missing}}`: the example has no field `input.missing`",
        );
        check_err(
            "{{input.q.deeper}}",
            "`{{input.q.deeper}}`: the example has no field `input.q.deeper`",
        );
        check_err("hi {{input.q", "`{{` at byte 3 is not closed by `}}`");
        check_err("{{a {{input.q}}", "`{{` at byte 0 is not closed by `}}`");
        check_err("{{}}", "`{{}}` is not a valid placeholder");
        check_err("{{input..q}}", "`{{input..q}}` is not a valid placeholder");
        check_err(
            "{{question}}",
            "`{{question}}`: unknown name (use input, expected, metadata or output)",
        );
        check_err("{{output}}", "`{{output}}` is only available to evaluators");
        check_err(
            "{{output.x}}",
            "`{{output.x}}`: the output is text and has no fields (use `{{output}}`)",
        );
        let bare = ExampleData::default();
        assert!(render("{{expected}}", &Vars::task(&bare)).is_err());
        assert!(render("{{metadata.a}}", &Vars::task(&bare)).is_err());
        assert!(render("{{input}}", &Vars::task(&bare)).is_err());
    }

    #[test]
    fn message_lists_report_the_index() {
        let msgs = vec![
            Message {
                role: "system".into(),
                content: "fine".into(),
            },
            Message {
                role: "user".into(),
                content: "{{input.nope}}".into(),
            },
        ];
        let err = render_messages(&msgs, &Vars::task(&example())).unwrap_err();
        assert_eq!(err.message, Some(1));
        assert!(err.to_string().starts_with("messages[1]: "));
    }

    #[test]
    fn validation_reports_syntax_roles_and_fields_no_example_has() {
        let msgs = vec![
            Message {
                role: "narrator".into(),
                content: "{{input.q}} {{input.rare}} {{input.none}} {{output}}".into(),
            },
            Message {
                role: "user".into(),
                content: "{{oops".into(),
            },
        ];
        let rare = ExampleData {
            input: json!({"rare": 1}),
            ..Default::default()
        };
        let problems = validate(&msgs, false, &[example(), rare]);
        let texts: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "messages[0]: unknown role `narrator` (use system, user, assistant or developer)",
                "messages[0]: `{{input.none}}`: the example has no field `input.none`",
                "messages[0]: `{{output}}` is only available to evaluators",
                "messages[1]: `{{` at byte 0 is not closed by `}}`",
            ]
        );
        // Evaluators may read the output; an empty sample checks syntax only.
        assert_eq!(validate(&msgs[..1], true, &[]).len(), 1);
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            "[a-z {}]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-c]{1,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn rendering_never_panics(text in r"[a-z.{} ]{0,60}", input in arb_value()) {
            let ex = ExampleData { input, ..Default::default() };
            let _ = render(&text, &Vars::eval(&ex, "o"));
        }

        #[test]
        fn text_without_braces_renders_unchanged(text in "[^{]{0,80}") {
            let ex = ExampleData::default();
            prop_assert_eq!(render(&text, &Vars::task(&ex)), Ok(text.clone()));
        }

        #[test]
        fn validation_agrees_with_rendering(
            path in prop::collection::vec("[a-c]", 1..4),
            input in arb_value(),
        ) {
            let content = format!("x {{{{input.{}}}}} y", path.join("."));
            let msgs = vec![Message { role: "user".into(), content }];
            let ex = ExampleData { input, ..Default::default() };
            let renders = render_messages(&msgs, &Vars::task(&ex)).is_ok();
            let valid = validate(&msgs, false, std::slice::from_ref(&ex)).is_empty();
            prop_assert_eq!(renders, valid);
        }

        #[test]
        fn strings_are_inserted_raw(s in ".{0,40}") {
            let ex = ExampleData { input: json!({"s": s.clone()}), ..Default::default() };
            prop_assert_eq!(render("{{input.s}}", &Vars::task(&ex)), Ok(s));
        }
    }
}
