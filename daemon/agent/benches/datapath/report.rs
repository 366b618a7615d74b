//! Medians, ratios and the printed tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// The finite values, ascending.
fn sorted_finite(values: &[f64]) -> Vec<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    sorted
}

/// A confidence interval for the median that assumes nothing about the distribution: the
/// order statistics `k` and `n + 1 - k` of the `n` finite values (1-based, ascending), with `k`
/// the largest for which P(Binomial(n, 1/2) < k) <= 2.5 %. Gives (low, high, coverage); `None`
/// for fewer than 6 values, where even the smallest and largest cover less than 95 %. For 16
/// values: the 4th and 13th, covering 97.9 %.
pub fn median_interval(values: &[f64]) -> Option<(f64, f64, f64)> {
    let sorted = sorted_finite(values);
    let n = sorted.len();
    let each = 0.5f64.powi(i32::try_from(n).ok()?);
    // `below` = P(B < k); `choose` = C(n, k).
    let (mut k, mut below, mut choose) = (0usize, 0.0f64, 1.0f64);
    while k < n / 2 && below + choose * each <= 0.025 {
        below += choose * each;
        k += 1;
        choose = choose * (n + 1 - k) as f64 / k as f64;
    }
    (k > 0).then(|| (sorted[k - 1], sorted[n - k], 1.0 - 2.0 * below))
}

/// `median_interval` as printed: ", 97.9 % interval 0.953–0.962", or nothing.
pub fn fmt_interval(values: &[f64]) -> String {
    median_interval(values).map_or_else(String::new, |(low, high, coverage)| {
        format!(
            ", {:.1} % interval {}–{}",
            coverage * 100.0,
            fmt_ratio(low),
            fmt_ratio(high)
        )
    })
}

/// The median (the mean of the middle two for an even count); NaN for no samples.
pub fn median(values: &[f64]) -> f64 {
    let sorted = sorted_finite(values);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        f64::midpoint(sorted[mid - 1], sorted[mid])
    }
}

pub fn median_duration(values: &[Duration]) -> Duration {
    let secs: Vec<f64> = values.iter().map(Duration::as_secs_f64).collect();
    let m = median(&secs);
    if m.is_finite() {
        Duration::from_secs_f64(m)
    } else {
        Duration::ZERO
    }
}

pub fn max_duration(values: &[Duration]) -> Duration {
    values.iter().copied().max().unwrap_or_default()
}

/// Milliseconds with a precision that suits the size.
pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// A whole number with thousands separators.
pub fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "-".to_owned();
    }
    let rounded = format!("{value:.0}");
    let (sign, digits) = rounded
        .strip_prefix('-')
        .map_or(("", rounded.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// A value of a metric, formatted for its unit.
pub fn value(metric: Metric, v: f64) -> String {
    if !v.is_finite() {
        return "-".to_owned();
    }
    match metric {
        Metric::Throughput => format!("{:.2}", v / 1e9),
        Metric::RequestResponse | Metric::NewConnections => thousands(v),
    }
}

pub fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        f64::NAN
    }
}

pub fn fmt_ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.3}")
    } else {
        "-".to_owned()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    Throughput,
    RequestResponse,
    NewConnections,
}

impl Metric {
    pub const ALL: [Self; 3] = [
        Self::Throughput,
        Self::RequestResponse,
        Self::NewConnections,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Throughput => "TCP throughput, iperf3 (Gbit/s)",
            Self::RequestResponse => "TCP request/response (trans/s)",
            Self::NewConnections => "TCP new connections (conn/s)",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Self::Throughput => "throughput",
            Self::RequestResponse => "request/response",
            Self::NewConnections => "new connections",
        }
    }

    /// The target for (c)/(`base`): against no programs (a), the small cluster (b), and no
    /// worse than nftables (e).
    pub fn target_vs(self, base: char) -> Option<Target> {
        match (base, self) {
            ('a', Self::Throughput | Self::RequestResponse) => Some(Target::AtLeast(0.97)),
            ('a', Self::NewConnections) => Some(Target::AtLeast(0.95)),
            ('b', _) => Some(Target::AtLeast(0.98)),
            ('e', _) => Some(Target::NoWorse),
            _ => None,
        }
    }
}

/// A target for a ratio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// A threshold: the ratio's median is at least this.
    AtLeast(f64),
    /// Parity or better: the ratio is not measurably below 1. With an interval for the median,
    /// only an interval wholly below 1 misses: at true parity, a median falls below 1.000 in
    /// half the runs. Without one, the median must be at least 1.
    NoWorse,
}

impl Target {
    /// Whether `estimate`, with `interval` (from `median_interval`) if there is one, meets the
    /// target; and a description of the target and of where the interval stands.
    pub fn judge(self, estimate: f64, interval: Option<(f64, f64, f64)>) -> (bool, String) {
        let bound = match self {
            Self::AtLeast(t) => t,
            Self::NoWorse => 1.0,
        };
        let name = match (self, interval) {
            (Self::AtLeast(t), _) => format!("target >= {t:.2}"),
            (Self::NoWorse, Some(_)) => "target: no worse, not measurably below 1.00".to_owned(),
            (Self::NoWorse, None) => "target: no worse, >= 1.00".to_owned(),
        };
        let Some((low, high, _)) = interval else {
            return (estimate >= bound, name);
        };
        // The median lies within its interval.
        let (met, standing) = if low >= bound {
            (true, "the whole interval meets it")
        } else if high < bound {
            (false, "the whole interval is below it")
        } else if estimate >= bound {
            (true, "the interval reaches below it")
        } else if self == Self::NoWorse {
            (
                true,
                "level: below 1.00 at the median, but the interval reaches 1.00",
            )
        } else {
            (false, "the interval reaches above it")
        };
        (met, format!("{name}; {standing}"))
    }
}

/// Samples per (configuration letter, metric), in round order.
#[derive(Debug, Default)]
pub struct Samples {
    pub values: BTreeMap<(char, Metric), Vec<f64>>,
}

impl Samples {
    pub fn push(&mut self, config: char, metric: Metric, v: f64) {
        self.values.entry((config, metric)).or_default().push(v);
    }

    pub fn get(&self, config: char, metric: Metric) -> &[f64] {
        self.values
            .get(&(config, metric))
            .map_or(&[], Vec::as_slice)
    }

    pub fn median(&self, config: char, metric: Metric) -> f64 {
        median(self.get(config, metric))
    }

    /// Median over rounds of the per-round ratio `num/den` (rounds run back to back, so this
    /// cancels drift between rounds).
    pub fn paired_ratio(&self, num: char, den: char, metric: Metric) -> f64 {
        median(&self.paired_ratios(num, den, metric))
    }

    /// `num / den` in each round, in round order: their scatter shows how far one run's ratio
    /// can be trusted.
    pub fn paired_ratios(&self, num: char, den: char, metric: Metric) -> Vec<f64> {
        self.get(num, metric)
            .iter()
            .zip(self.get(den, metric))
            .map(|(n, d)| ratio(*n, *d))
            .collect()
    }

    /// (max - min) / median, over the rounds.
    pub fn spread(&self, config: char, metric: Metric) -> f64 {
        let v = self.get(config, metric);
        let max = v.iter().copied().fold(f64::NAN, f64::max);
        let min = v.iter().copied().fold(f64::NAN, f64::min);
        ratio(max - min, median(v))
    }
}

/// Renders a left-aligned first column and right-aligned others as a Markdown table.
pub fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut out = String::from("|");
        for (i, cell) in cells.iter().enumerate().take(columns) {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i == 0 {
                let _ = write!(out, " {cell}{} |", " ".repeat(pad));
            } else {
                let _ = write!(out, " {}{cell} |", " ".repeat(pad));
            }
        }
        out
    };
    let mut out = line(header);
    out.push('\n');
    out.push('|');
    for (i, w) in widths.iter().enumerate() {
        if i == 0 {
            let _ = write!(out, "{}|", "-".repeat(w + 2));
        } else {
            let _ = write!(out, "{}:|", "-".repeat(w + 1));
        }
    }
    out.push('\n');
    for row in rows {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}
