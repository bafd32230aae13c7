//! Figures, goals and what a scenario reports: the median of its runs with
//! min–max, whether the goal is met, the machine it ran on (CPU count, load
//! average, git commit), the JSON file under `target/bench/` and the table.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use serde::Serialize;
use serde_json::{Value, json};

/// How a figure is compared with its goal.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(crate) enum Goal {
    /// The figure must be at most this.
    #[serde(rename = "<=")]
    AtMost(f64),
    /// The figure must be at least this.
    #[serde(rename = ">=")]
    AtLeast(f64),
}

impl Goal {
    /// Whether `value` meets the goal.
    pub(crate) fn met(self, value: f64) -> bool {
        match self {
            Goal::AtMost(limit) => value <= limit,
            Goal::AtLeast(limit) => value >= limit,
        }
    }

    fn text(self) -> String {
        match self {
            Goal::AtMost(limit) => format!("≤ {}", trimmed(limit)),
            Goal::AtLeast(limit) => format!("≥ {}", trimmed(limit)),
        }
    }
}

/// What a scenario measures: a key its runs fill in, a label, a unit and the
/// goal (none for a baseline printed for context).
#[derive(Clone, Copy, Debug)]
pub(crate) struct FigureSpec {
    /// Key in a run's figures.
    pub(crate) key: &'static str,
    /// What the table says.
    pub(crate) label: &'static str,
    /// Unit, for the JSON (`ratio`, `s`, `runs/s`, `MB`, …).
    pub(crate) unit: &'static str,
    /// The goal the median must meet.
    pub(crate) goal: Option<Goal>,
    /// Whether the figure does not depend on the machine's speed (a share
    /// of 429s, calls per result, duplicates, an outcome): such goals are
    /// checked in CI (`--check=independent`); times and ratios of times are
    /// not, a loaded machine makes them worse.
    pub(crate) independent: bool,
    /// The goal applies at full size only: at `--quick` size the figure is
    /// reported without a goal (too few runs for it to mean anything).
    pub(crate) full_size_only: bool,
    /// A different goal at `--quick` size, where a fixed start-up cost
    /// weighs more on few runs.
    pub(crate) quick_goal: Option<Goal>,
}

impl FigureSpec {
    /// A figure with a goal.
    pub(crate) const fn goal(
        key: &'static str,
        label: &'static str,
        unit: &'static str,
        goal: Goal,
    ) -> Self {
        Self {
            key,
            label,
            unit,
            goal: Some(goal),
            independent: false,
            full_size_only: false,
            quick_goal: None,
        }
    }

    /// The same figure with another goal at `--quick` size.
    pub(crate) const fn quick_goal(self, goal: Goal) -> Self {
        Self {
            quick_goal: Some(goal),
            ..self
        }
    }

    /// The same figure with its goal applied at full size only.
    pub(crate) const fn full_size_only(self) -> Self {
        Self {
            full_size_only: true,
            ..self
        }
    }

    /// The same figure, marked as independent of the machine's speed.
    pub(crate) const fn independent(self) -> Self {
        Self {
            independent: true,
            ..self
        }
    }

    /// A figure printed for context (a baseline, a raw count).
    pub(crate) const fn context(
        key: &'static str,
        label: &'static str,
        unit: &'static str,
    ) -> Self {
        Self {
            key,
            label,
            unit,
            goal: None,
            independent: false,
            full_size_only: false,
            quick_goal: None,
        }
    }
}

/// One run of a scenario: a value per figure key, and the raw numbers
/// behind them (kept in the JSON file).
#[derive(Clone, Debug, Default)]
pub(crate) struct Run {
    /// Figure values by key.
    pub(crate) figures: Vec<(&'static str, f64)>,
    /// Raw measurements.
    pub(crate) details: Value,
    /// Parts of the run that failed while others went on (the run counts as
    /// failed, its other figures are kept).
    pub(crate) errors: Vec<String>,
}

impl Run {
    /// Sets a figure.
    pub(crate) fn figure(&mut self, key: &'static str, value: f64) {
        self.figures.push((key, value));
    }

    fn get(&self, key: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }
}

/// A figure over all runs.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Figure {
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    goal: Option<Goal>,
    /// Whether the goal does not depend on the machine's speed.
    machine_independent: bool,
    /// The goal was left out because it applies at full size only.
    full_size_only: bool,
    samples: Vec<f64>,
    median: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    /// Whether the median meets the goal (`None` without a goal or samples).
    pub(crate) met: Option<bool>,
}

impl Figure {
    /// Whether its goal, if it has one, is met (no sample: not met).
    pub(crate) fn goal_met(&self) -> bool {
        self.goal.is_none() || self.met == Some(true)
    }
}

/// Median of `values` (the mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// Jain's fairness index of `xs`: (Σx)² / (n · Σx²); 1 when all are equal,
/// 1/n when one gets everything.
pub(crate) fn jain(xs: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let sum: f64 = xs.iter().sum();
    let squares: f64 = xs.iter().map(|x| x * x).sum();
    if n == 0.0 || squares == 0.0 {
        return 0.0;
    }
    sum * sum / (n * squares)
}

/// Aggregates the runs' values of `spec` (at `--quick` size when `quick`).
pub(crate) fn aggregate(spec: &FigureSpec, runs: &[Run], quick: bool) -> Figure {
    let samples: Vec<f64> = runs.iter().filter_map(|r| r.get(spec.key)).collect();
    let finite = || samples.iter().copied().filter(|v| v.is_finite());
    let median = median(&samples);
    let goal = if quick {
        spec.quick_goal.or(spec.goal)
    } else {
        spec.goal
    }
    .filter(|_| !(quick && spec.full_size_only));
    Figure {
        key: spec.key,
        label: spec.label,
        unit: spec.unit,
        goal,
        machine_independent: spec.independent,
        full_size_only: quick && spec.full_size_only,
        median,
        min: finite().reduce(f64::min),
        max: finite().reduce(f64::max),
        met: goal.zip(median).map(|(g, m)| g.met(m)),
        samples,
    }
}

/// Which goals `cargo xtask bench --check` enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Check {
    /// Every goal.
    All,
    /// Only goals whose figures do not depend on the machine's speed
    /// ([`FigureSpec::independent`]): what CI can check on any machine.
    Independent,
}

impl Check {
    /// Whether this check applies to `figure`.
    pub(crate) fn covers(self, figure: &Figure) -> bool {
        match self {
            Check::All => true,
            Check::Independent => figure.machine_independent,
        }
    }
}

/// The goals of `report` that `check` covers and that were missed (or have
/// no sample), as `S1 label: median (goal)`.
pub(crate) fn missed(report: &ScenarioReport, check: Check) -> Vec<String> {
    report
        .figures
        .iter()
        .filter(|f| check.covers(f) && !f.goal_met())
        .map(|f| {
            format!(
                "{} {}: {} (goal {})",
                report.scenario,
                f.label,
                f.median.map_or("no value".into(), number),
                f.goal.map_or(String::new(), Goal::text)
            )
        })
        .collect()
}

/// The machine a scenario ran on.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Machine {
    cpus: usize,
    cpu_model: String,
    /// 1-, 5- and 15-minute load averages when the scenario began.
    load_before: [f64; 3],
    /// … and when it ended.
    load_after: [f64; 3],
    commit: String,
    dirty: bool,
    date: String,
}

/// The 1-, 5- and 15-minute load averages.
pub(crate) fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(f64::NAN));
    [
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
    ]
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(crate::harness::workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

impl Machine {
    /// The machine now; `load_before` is the load when the scenario began.
    pub(crate) fn now(load_before: [f64; 3]) -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_owned())
            .unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model,
            load_before,
            load_after: load_average(),
            commit: command_output("git", &["rev-parse", "--short=12", "HEAD"]),
            dirty: !command_output("git", &["status", "--porcelain", "--untracked-files=no"])
                .is_empty(),
            date: command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        }
    }
}

/// One scenario's result: what goes into its JSON file and the table.
#[derive(Debug, Serialize)]
pub(crate) struct ScenarioReport {
    /// `S1`…
    pub(crate) scenario: &'static str,
    /// One line.
    pub(crate) title: &'static str,
    /// The set-up, as run.
    pub(crate) setup: String,
    /// Quick sizes (CI) or full sizes.
    pub(crate) quick: bool,
    /// Runs that finished.
    pub(crate) runs: usize,
    /// Per figure: samples, median, min, max, goal, met.
    pub(crate) figures: Vec<Figure>,
    /// Raw measurements of each run.
    pub(crate) details: Vec<Value>,
    /// Errors of runs that failed.
    pub(crate) errors: Vec<String>,
    /// Whether every goal is met (and no run failed).
    pub(crate) pass: bool,
    /// Where it ran.
    pub(crate) machine: Machine,
}

impl ScenarioReport {
    /// Writes `target/bench/<scenario>.json` under `root`.
    pub(crate) fn write(&self, root: &Path) -> anyhow::Result<std::path::PathBuf> {
        let dir = root.join("target").join("bench");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.json", self.scenario));
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)?;
        Ok(path)
    }
}

/// A number with about four significant digits, without noise.
pub(crate) fn number(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    if a >= 1000.0 || v == v.trunc() && a < 1e15 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A goal's number: as many decimals as it has, no more.
fn trimmed(v: f64) -> String {
    let text = format!("{v:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_owned()
}

/// The table of every figure of `reports`, in Markdown (it reads as plain
/// text in a terminal and pastes into BENCHMARKS.md).
pub(crate) fn table(reports: &[ScenarioReport]) -> String {
    let mut rows = vec![[
        "scenario".to_owned(),
        "figure".to_owned(),
        "median".to_owned(),
        "min–max".to_owned(),
        "goal".to_owned(),
        "met?".to_owned(),
    ]];
    for report in reports {
        if report.figures.iter().all(|f| f.median.is_none()) {
            rows.push([
                report.scenario.to_owned(),
                format!("(failed: {})", report.errors.join("; ")),
                "–".into(),
                "–".into(),
                "–".into(),
                "no".into(),
            ]);
            continue;
        }
        for figure in &report.figures {
            let range = match (figure.min, figure.max) {
                (Some(a), Some(b)) => format!("{}–{}", number(a), number(b)),
                _ => "–".into(),
            };
            rows.push([
                report.scenario.to_owned(),
                figure.label.to_owned(),
                figure.median.map_or("–".into(), number),
                range,
                match (figure.goal, figure.machine_independent) {
                    (None, _) if figure.full_size_only => "(full size)".into(),
                    (None, _) => "(baseline)".into(),
                    (Some(goal), false) => goal.text(),
                    // Marked: the goals `--check=independent` enforces.
                    (Some(goal), true) => format!("{} ᵢ", goal.text()),
                },
                match figure.met {
                    Some(true) => "yes".into(),
                    Some(false) => "**no**".into(),
                    None => "".into(),
                },
            ]);
        }
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (n, row) in rows.iter().enumerate() {
        out.push('|');
        for (i, cell) in row.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            let _ = write!(out, " {cell}{} |", " ".repeat(pad));
        }
        out.push('\n');
        if n == 0 {
            out.push('|');
            for w in &widths {
                let _ = write!(out, "{}|", "-".repeat(w + 2));
            }
            out.push('\n');
        }
    }
    out
}

/// The JSON of every report, for `--json`.
pub(crate) fn json_all(reports: &[ScenarioReport]) -> Value {
    json!({ "scenarios": reports })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_non_finite() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn jain_is_one_when_equal_and_one_over_n_when_one_takes_all() {
        assert!((jain(&[10.0, 10.0, 10.0, 10.0]) - 1.0).abs() < 1e-12);
        assert!((jain(&[40.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
        let skewed = jain(&[11.0, 10.0, 10.0, 9.0]);
        assert!(skewed < 1.0 && skewed > 0.99, "{skewed}");
        assert_eq!(jain(&[]), 0.0);
    }

    #[test]
    fn goals_compare_the_median() {
        let spec = FigureSpec::goal("x", "x", "ratio", Goal::AtMost(1.05));
        let runs: Vec<Run> = [1.02, 1.2, 1.04]
            .iter()
            .map(|v| Run {
                figures: vec![("x", *v)],
                ..Run::default()
            })
            .collect();
        let figure = aggregate(&spec, &runs, false);
        assert_eq!(figure.median, Some(1.04));
        assert_eq!((figure.min, figure.max), (Some(1.02), Some(1.2)));
        assert_eq!(figure.met, Some(true));
        assert!(Goal::AtLeast(2000.0).met(2000.0));
        assert!(!Check::Independent.covers(&figure));
        assert!(Check::All.covers(&figure));
        let independent = aggregate(&spec.independent(), &runs, false);
        assert!(Check::Independent.covers(&independent));
        let long = spec.full_size_only();
        assert_eq!(aggregate(&long, &runs, false).met, Some(true));
        let quick = aggregate(&long, &runs, true);
        assert_eq!(
            (quick.goal, quick.met, quick.median),
            (None, None, Some(1.04))
        );
        assert!(!Goal::AtLeast(2000.0).met(1999.9));
    }

    #[test]
    fn missed_goals_are_named_by_the_check_that_covers_them() {
        let runs = vec![Run {
            figures: vec![("time", 2.0), ("share", 0.5)],
            ..Run::default()
        }];
        let specs = [
            FigureSpec::goal("time", "completion ÷ ideal", "ratio", Goal::AtMost(1.05)),
            FigureSpec::goal("share", "429 share", "ratio", Goal::AtMost(0.02)).independent(),
            FigureSpec::goal("absent", "never filled", "ratio", Goal::AtMost(1.0)).independent(),
            FigureSpec::context("base", "a baseline", "ratio"),
        ];
        let report = ScenarioReport {
            scenario: "S0",
            title: "test",
            setup: String::new(),
            quick: true,
            runs: 1,
            figures: specs.iter().map(|s| aggregate(s, &runs, true)).collect(),
            details: Vec::new(),
            errors: Vec::new(),
            pass: false,
            machine: Machine::now([0.0; 3]),
        };
        let all = missed(&report, Check::All);
        assert_eq!(all.len(), 3, "{all:?}");
        let independent = missed(&report, Check::Independent);
        assert_eq!(
            independent,
            vec![
                "S0 429 share: 0.500 (goal ≤ 0.02)".to_owned(),
                "S0 never filled: no value (goal ≤ 1)".to_owned()
            ]
        );
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(number(1.0412345), "1.041");
        assert_eq!(number(12.345), "12.35");
        assert_eq!(number(2345.6), "2346");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(f64::NAN), "–");
    }
}
