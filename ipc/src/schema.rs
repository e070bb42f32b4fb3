//! How the owner of a stats block describes its cells to a reader: metric families, their
//! series, and which cell each series reads. ipc defines the shape and names nothing; proxy-core
//! and cache-backends each publish a `&'static [Family]` for their blocks, and the supervisor
//! turns those into Prometheus families.

use crate::stats::{CounterId, GaugeId, HistogramId};

/// The Prometheus type of a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (also a gauge cell that the owner only ever raises, like a backend's
    /// evictions since it opened).
    Counter,
    /// Goes up and down.
    Gauge,
    /// A latency histogram (reads a histogram cell).
    Histogram,
}

/// The cell of a member's block that a series reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cell {
    /// A counter.
    Counter(CounterId),
    /// A gauge.
    Gauge(GaugeId),
    /// A histogram.
    Histogram(HistogramId),
}

/// The value of a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelValue {
    /// The same for every member.
    Fixed(&'static str),
    /// The member's slot number: one series per member. A series without a `Slot` label is
    /// the sum over every member that shares the schema.
    Slot,
}

/// One label of a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label {
    /// Its name.
    pub name: &'static str,
    /// Its value.
    pub value: LabelValue,
}

impl Label {
    /// A label with the same value for every member.
    pub const fn fixed(name: &'static str, value: &'static str) -> Label {
        Label {
            name,
            value: LabelValue::Fixed(value),
        }
    }

    /// A label holding the member's slot.
    pub const fn slot(name: &'static str) -> Label {
        Label {
            name,
            value: LabelValue::Slot,
        }
    }
}

/// One series of a family: its labels and the cell it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Series {
    /// Its labels, in the order they are shown.
    pub labels: &'static [Label],
    /// Where its value comes from.
    pub cell: Cell,
}

/// A metric family: a name, a help text, a type and its series. Families of the same name in
/// two schemas are one family to the reader, so they must agree on help, type and label names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Family {
    /// The metric name.
    pub name: &'static str,
    /// One line of help.
    pub help: &'static str,
    /// Its type.
    pub kind: MetricKind,
    /// Its series.
    pub series: &'static [Series],
}

impl Family {
    /// The label names of its series (all series of a consistent family share them).
    pub fn label_names(&self) -> impl Iterator<Item = &'static str> {
        self.series
            .first()
            .map_or(&[][..], |series| series.labels)
            .iter()
            .map(|label| label.name)
    }
}

/// Whether a schema is well formed, for a `const` assertion next to it: every family has a
/// series, histogram families read histogram cells and no other family does, the series of a
/// family have the same label names, and no family name appears twice. (The cells are inside
/// the block by construction: [`CounterId`] and the other ids cannot hold an index past it.)
pub const fn schema_is_consistent(families: &[Family]) -> bool {
    let mut f = 0;
    while f < families.len() {
        let family = &families[f];
        if family.series.is_empty() {
            return false;
        }
        let mut s = 0;
        while s < family.series.len() {
            let series = &family.series[s];
            let histogram_cell = matches!(series.cell, Cell::Histogram(_));
            let histogram_family = matches!(family.kind, MetricKind::Histogram);
            if histogram_cell != histogram_family
                || !same_label_names(series.labels, family.series[0].labels)
            {
                return false;
            }
            s += 1;
        }
        let mut other = f + 1;
        while other < families.len() {
            if str_eq(families[other].name, family.name) {
                return false;
            }
            other += 1;
        }
        f += 1;
    }
    true
}

const fn same_label_names(a: &[Label], b: &[Label]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if !str_eq(a[i].name, b[i].name) {
            return false;
        }
        i += 1;
    }
    true
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const HITS: Series = Series {
        labels: &[Label::fixed("result", "hit"), Label::slot("slot")],
        cell: Cell::Counter(CounterId::at::<0>()),
    };
    const GOOD: &[Family] = &[
        Family {
            name: "lookups_total",
            help: "Lookups.",
            kind: MetricKind::Counter,
            series: &[
                HITS,
                Series {
                    labels: &[Label::fixed("result", "miss"), Label::slot("slot")],
                    cell: Cell::Counter(CounterId::at::<1>()),
                },
            ],
        },
        Family {
            name: "latency_seconds",
            help: "Latency.",
            kind: MetricKind::Histogram,
            series: &[Series {
                labels: &[],
                cell: Cell::Histogram(HistogramId::at::<0>()),
            }],
        },
    ];
    const _: () = assert!(schema_is_consistent(GOOD));

    #[test]
    fn inconsistent_schemas_are_refused() {
        let family = |kind, series| Family {
            name: "x",
            help: "x",
            kind,
            series,
        };
        assert!(!schema_is_consistent(&[family(MetricKind::Counter, &[])]));
        assert!(!schema_is_consistent(&[family(
            MetricKind::Histogram,
            &[HITS]
        )]));
        const OTHER_LABELS: Series = Series {
            labels: &[Label::fixed("result", "miss")],
            cell: Cell::Counter(CounterId::at::<1>()),
        };
        assert!(!schema_is_consistent(&[family(
            MetricKind::Counter,
            &[HITS, OTHER_LABELS]
        )]));
        let twice = family(MetricKind::Counter, &[HITS]);
        assert!(!schema_is_consistent(&[twice, twice]));
        assert_eq!(
            GOOD[0].label_names().collect::<Vec<_>>(),
            ["result", "slot"]
        );
    }
}
