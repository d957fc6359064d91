//! The report's data model: sections of tables, figures and plots, each
//! table with the exact command behind it, each figure with its baseline,
//! its target and whether it is met, and whether it is a wall-clock figure
//! or a count of events.

use serde::Serialize;

/// A measured value, or why there is none. A value is always finite: a
/// measurement that gave no finite number is [`Value::NotAvailable`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Value {
    /// A finite number measured in this run.
    Number { value: f64 },
    /// An outside tool this row needs is not installed.
    NotInstalled { tool: String },
    /// This machine cannot measure it.
    NotAvailable { reason: String },
}

impl Value {
    /// `x`, or "not available here" if it is not finite.
    pub fn num(x: f64) -> Value {
        if x.is_finite() {
            Value::Number { value: x }
        } else {
            Value::NotAvailable {
                reason: format!("the measurement gave {x}, not a finite number"),
            }
        }
    }

    /// The tool `tool` is not installed.
    pub fn not_installed(tool: &str) -> Value {
        Value::NotInstalled { tool: tool.into() }
    }

    /// Not available here, for `reason`.
    pub fn not_available(reason: impl Into<String>) -> Value {
        Value::NotAvailable {
            reason: reason.into(),
        }
    }

    /// The number, if there is one.
    pub fn number(&self) -> Option<f64> {
        match self {
            Value::Number { value } => Some(*value),
            _ => None,
        }
    }

    /// As a table cell: the number with a precision fit for its size, or
    /// the reason there is none.
    pub fn text(&self) -> String {
        match self {
            Value::Number { value } => format_number(*value),
            Value::NotInstalled { tool } => format!("not installed ({tool})"),
            Value::NotAvailable { reason } => format!("not available here: {reason}"),
        }
    }
}

/// `x` with three significant digits, or as an integer from 1000 up.
pub fn format_number(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 || x.fract() == 0.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// What a figure measures: time on this machine's clock, or events the code
/// counts itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Wall-clock time (or a rate over it): meaningful as a ratio against a
    /// baseline measured side by side in the same run on this machine.
    WallClock,
    /// Events counted by the code (exits, faults, bytes copied): the same
    /// on any host running the same code.
    Counted,
}

impl Kind {
    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Kind::WallClock => "wall-clock",
            Kind::Counted => "counted events",
        }
    }
}

/// One cell of a table: text (a label) or a value.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Cell {
    Text(String),
    Value(Value),
}

impl Cell {
    /// As shown in a table.
    pub fn text(&self) -> String {
        match self {
            Cell::Text(t) => t.clone(),
            Cell::Value(v) => v.text(),
        }
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.into())
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}

impl From<Value> for Cell {
    fn from(v: Value) -> Cell {
        Cell::Value(v)
    }
}

/// A table of results and the command that produced them.
#[derive(Clone, Debug, Serialize)]
pub struct Table {
    pub title: String,
    /// The exact command behind the table (a `dbos bench` invocation and
    /// the building block it calls).
    pub command: String,
    pub kind: Kind,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

/// A figure a claim rests on, next to its baseline and its target.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: Value,
    pub unit: String,
    /// What it is compared with, and that value in this run.
    pub baseline: String,
    pub baseline_value: Value,
    /// The target, as the issue or README states it.
    pub target: String,
    /// Whether the target is met; `None` when there is no value.
    pub met: Option<bool>,
    pub kind: Kind,
}

/// An SVG plot written beside the report.
#[derive(Clone, Debug, Serialize)]
pub struct Plot {
    pub title: String,
    /// The file name, relative to the report directory.
    pub file: String,
    /// The axes' labels, as drawn.
    pub x_label: String,
    pub y_label: String,
}

/// One section of the report (storage, snapshots, ...).
#[derive(Clone, Debug, Serialize)]
pub struct Section {
    /// The name `--only` takes.
    pub name: String,
    pub title: String,
    /// What is measured and how, in a few sentences.
    pub about: String,
    pub figures: Vec<Figure>,
    pub tables: Vec<Table>,
    pub plots: Vec<Plot>,
    /// Remarks: what was skipped and why, what is not done yet.
    pub notes: Vec<String>,
    pub seconds: f64,
    /// Why the section failed (a workload stopped on an error), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

impl Section {
    /// An empty section.
    pub fn new(name: &str, title: &str, about: &str) -> Section {
        Section {
            name: name.into(),
            title: title.into(),
            about: about.into(),
            figures: Vec::new(),
            tables: Vec::new(),
            plots: Vec::new(),
            notes: Vec::new(),
            seconds: 0.0,
            failed: None,
        }
    }
}

/// The machine a report was measured on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory: String,
    pub kernel: String,
    pub disk: String,
    pub kvm: String,
    /// True when guest ring 0 runs on hardware virtualization (VT-x,
    /// AMD-V); false when KVM emulates it or there is no KVM.
    pub kvm_hardware: bool,
}

/// A whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The command line that produced it.
    pub command: String,
    pub quick: bool,
    /// When it ran, UTC (RFC 3339).
    pub started: String,
    pub machine: Machine,
    pub sections: Vec<Section>,
    pub total_seconds: f64,
}

/// Why figures are wall-clock or counted events: the report's preamble.
pub const KINDS_EXPLAINED: &str = "Wall-clock figures (latencies, rates) are measured on this \
     machine's clock; a shared virtual machine's disk and CPUs move from run to run and from \
     day to day, so only ratios against a baseline measured side by side in the same run mean \
     anything. Counted figures (VM exits, faults, bytes copied) are events the code counts \
     itself; they do not depend on the host's speed, which is how guest ring-0 paths are \
     judged where KVM emulates ring 0 (guest wall-clock time there says nothing about the same \
     code on VT-x or AMD-V).";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_that_is_not_finite_is_not_available() {
        assert!(matches!(Value::num(f64::NAN), Value::NotAvailable { .. }));
        assert!(matches!(
            Value::num(f64::INFINITY),
            Value::NotAvailable { .. }
        ));
        assert_eq!(Value::num(2.5).number(), Some(2.5));
    }

    #[test]
    fn numbers_print_with_a_precision_fit_for_their_size() {
        assert_eq!(format_number(123456.7), "123457");
        assert_eq!(format_number(123.45), "123.5");
        assert_eq!(format_number(12.345), "12.35");
        assert_eq!(format_number(1.2345), "1.234");
        assert_eq!(format_number(2.0), "2");
    }
}
