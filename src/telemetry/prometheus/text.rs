//! Writes the Prometheus text exposition (0.0.4) straight from the SDK's
//! collected data.
//!
//! opentelemetry-prometheus converts every data point into one
//! `prometheus::proto::MetricFamily` of its own, which the registry then
//! merges and sorts: at 10,000 nodes that alone is most of a second. This
//! writer produces the same lines (names with unit and `_total` suffixes,
//! sanitized and merged labels, HELP/TYPE, `target_info`) in one pass with
//! no per-point allocation. `reference_tests` holds it to the reference
//! encoder in process: on hostile values (escapes, non-ASCII, merged label
//! names, -0, 2^53+1, 1e21, extremes), and through the whole pipeline after
//! flips, deletes and re-adds, gzip included. `--prometheus-encoder
//! reference` keeps the reference on the hot path for anyone who wants it there.

use std::{borrow::Cow, io, io::Write};

use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::{
    Resource,
    metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics},
};

/// Writes `target_info` for `resource`, as the reference does: nothing for an empty resource.
pub fn write_target_info<W: Write + ?Sized>(resource: &Resource, out: &mut W) -> io::Result<()> {
    if resource.is_empty() {
        return Ok(());
    }
    out.write_all(b"# HELP target_info Target metadata\n# TYPE target_info gauge\ntarget_info")?;
    let attrs: Vec<KeyValue> = resource
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    let refs: Vec<&KeyValue> = attrs.iter().collect();
    Labels::default().write(&refs, out)?;
    out.write_all(b" 1\n")
}

/// Writes every metric of `rm` that has points, each with its HELP and
/// TYPE. Histograms are not written: this exporter creates none.
pub fn write_metrics<W: Write + ?Sized>(rm: &ResourceMetrics, out: &mut W) -> io::Result<()> {
    write_all(rm, true, out)
}

fn write_all<W: Write + ?Sized>(rm: &ResourceMetrics, headers: bool, out: &mut W) -> io::Result<()> {
    let mut labels = Labels::default();
    for scope in rm.scope_metrics() {
        for metric in scope.metrics() {
            match metric.data() {
                AggregatedMetrics::F64(d) => write_data(metric, d, |v| v, headers, &mut labels, out)?,
                AggregatedMetrics::U64(d) => write_data(metric, d, |v| v as f64, headers, &mut labels, out)?,
                AggregatedMetrics::I64(d) => write_data(metric, d, |v| v as f64, headers, &mut labels, out)?,
            }
        }
    }
    Ok(())
}

/// The Prometheus name of an instrument: unit suffix, and `_total` for counters.
pub fn prometheus_name(name: &str, unit: &str, counter: bool) -> String {
    let mut name = metric_name(name, unit).into_owned();
    if counter {
        name.push_str("_total");
    }
    name
}

/// Writes the HELP (unless `description` is empty) and TYPE lines of a metric.
pub fn write_header<W: Write + ?Sized>(
    out: &mut W,
    name: &str,
    description: &str,
    counter: bool,
) -> io::Result<()> {
    if !description.is_empty() {
        write!(out, "# HELP {name} ")?;
        write_escaped(out, description, false)?;
        out.write_all(b"\n")?;
    }
    writeln!(out, "# TYPE {name} {}", if counter { "counter" } else { "gauge" })
}

fn write_data<T: Copy, W: Write + ?Sized>(
    metric: &Metric,
    data: &MetricData<T>,
    as_f64: impl Fn(T) -> f64,
    header: bool,
    labels: &mut Labels,
    out: &mut W,
) -> io::Result<()> {
    // A non-monotonic sum is a gauge to Prometheus.
    let (counter, empty) = match data {
        MetricData::Gauge(g) => (false, g.data_points().next().is_none()),
        MetricData::Sum(s) => (s.is_monotonic(), s.data_points().next().is_none()),
        MetricData::Histogram(_) | MetricData::ExponentialHistogram(_) => return Ok(()),
    };
    if empty {
        return Ok(());
    }
    let name = prometheus_name(metric.name(), metric.unit(), counter);
    if header {
        write_header(out, &name, metric.description(), counter)?;
    }
    let mut number = NumberBuf::default();
    let mut attrs: Vec<&KeyValue> = Vec::new();
    match data {
        MetricData::Gauge(g) => {
            for p in g.data_points() {
                attrs.clear();
                attrs.extend(p.attributes());
                write_sample(out, &name, labels, &mut number, &attrs, as_f64(p.value()))?;
            }
        }
        MetricData::Sum(s) => {
            for p in s.data_points() {
                attrs.clear();
                attrs.extend(p.attributes());
                write_sample(out, &name, labels, &mut number, &attrs, as_f64(p.value()))?;
            }
        }
        MetricData::Histogram(_) | MetricData::ExponentialHistogram(_) => {}
    }
    Ok(())
}

/// Writes samples straight from readings, reusing its buffers from one
/// sample to the next: the node section's path, which skips the SDK.
#[derive(Default)]
pub struct SampleWriter {
    labels: Labels,
    number: NumberBuf,
}

impl SampleWriter {
    /// Writes one sample of metric `name` (its Prometheus name), with
    /// `attrs` as the SDK hands them to an exporter: sorted by key, each key once.
    pub fn write<W: Write + ?Sized>(
        &mut self,
        out: &mut W,
        name: &str,
        attrs: &[KeyValue],
        value: f64,
    ) -> io::Result<()> {
        write_sample(out, name, &mut self.labels, &mut self.number, attrs, value)
    }
}

fn write_sample<W: Write + ?Sized, K: std::borrow::Borrow<KeyValue>>(
    out: &mut W,
    name: &str,
    labels: &mut Labels,
    number: &mut NumberBuf,
    attrs: &[K],
    value: f64,
) -> io::Result<()> {
    out.write_all(name.as_bytes())?;
    labels.write(attrs, out)?;
    out.write_all(b" ")?;
    out.write_all(number.format(value))?;
    out.write_all(b"\n")
}

/// The Prometheus name of an OpenTelemetry metric: sanitized, with the unit
/// suffix opentelemetry-prometheus appends (`s` → `_seconds`, `1` → `_ratio`…).
pub fn metric_name<'a>(name: &'a str, unit: &str) -> Cow<'a, str> {
    let name = sanitize_name(name);
    match unit_suffix(unit) {
        Some(suffix) => Cow::Owned(format!("{name}_{suffix}")),
        None => name,
    }
}

/// Units the OTel → Prometheus mapping turns into a name suffix; `a/b`
/// becomes `a_per_b` (or `per_b` when `a` does not map or is a unit of time or `1`).
fn unit_suffix(unit: &str) -> Option<Cow<'static, str>> {
    const NOT_ON_PER_UNIT: [&str; 8] = ["1", "d", "h", "min", "s", "ms", "us", "ns"];
    if unit.is_empty() {
        return None;
    }
    if let Some(u) = prom_unit(unit) {
        return Some(Cow::Borrowed(u));
    }
    let (first, second) = unit.split_once('/')?;
    let per = prom_per_unit(second)?;
    match prom_unit(first) {
        Some(f) if !NOT_ON_PER_UNIT.contains(&first) => Some(Cow::Owned(format!("{f}_per_{per}"))),
        _ => Some(Cow::Owned(format!("per_{per}"))),
    }
}

fn prom_unit(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" | "B" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" | "KB" => "kilobytes",
        "MBy" | "MB" => "megabytes",
        "GBy" | "GB" => "gigabytes",
        "TBy" | "TB" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "1" => "ratio",
        "%" => "percent",
        _ => return None,
    })
}

fn prom_per_unit(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        _ => return None,
    })
}

/// Metric name sanitizing exactly as opentelemetry-prometheus does it: a
/// leading digit gets `_` before it; from the first character that is not
/// alphanumeric, `_` or `:`, every non-ASCII-alphanumeric one becomes `_`.
fn sanitize_name(s: &str) -> Cow<'_, str> {
    let mut prefix = "";
    let first_bad = s.char_indices().find(|(i, c)| {
        if *i == 0 && c.is_ascii_digit() {
            prefix = "_";
            true
        } else {
            !c.is_alphanumeric() && *c != '_' && *c != ':'
        }
    });
    let Some((at, _)) = first_bad else {
        return Cow::Borrowed(s);
    };
    let (valid, rest) = s.split_at(at);
    let mut out = String::with_capacity(s.len() + 1);
    out.push_str(prefix);
    out.push_str(valid);
    out.extend(rest.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            c
        } else {
            '_'
        }
    }));
    Cow::Owned(out)
}

/// Label name sanitizing as opentelemetry-prometheus does it: everything
/// but ASCII alphanumerics and `:` becomes `_`.
fn sanitize_label(s: &str) -> Cow<'_, str> {
    if s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b':') {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == ':' {
                    c
                } else {
                    '_'
                }
            })
            .collect(),
    )
}

/// Writes label sets, reusing its buffers from one point to the next.
#[derive(Default)]
struct Labels {
    /// Sanitized names of the keys seen so far (keys repeat on every point).
    names: Vec<(String, String)>,
    /// (sanitized name index, original key, value) of the current point.
    current: Vec<(usize, usize)>,
}

impl Labels {
    fn sanitized(&mut self, key: &str) -> usize {
        if let Some(i) = self.names.iter().position(|(k, _)| k == key) {
            return i;
        }
        self.names
            .push((key.to_string(), sanitize_label(key).into_owned()));
        self.names.len() - 1
    }

    /// Labels sorted by sanitized name; attributes whose names sanitize to the
    /// same label are merged into one value joined by `;`, in the order of
    /// their original keys — the reference's rules.
    fn write<W: Write + ?Sized, K: std::borrow::Borrow<KeyValue>>(
        &mut self,
        attrs: &[K],
        out: &mut W,
    ) -> io::Result<()> {
        if attrs.is_empty() {
            return Ok(());
        }
        let attrs: &[K] = attrs;
        let attr = |i: usize| attrs[i].borrow();
        self.current.clear();
        for (i, kv) in attrs.iter().map(|k| k.borrow()).enumerate() {
            let name = self.sanitized(kv.key.as_str());
            self.current.push((name, i));
        }
        let names = &self.names;
        self.current.sort_by(|a, b| {
            names[a.0]
                .1
                .cmp(&names[b.0].1)
                .then_with(|| attr(a.1).key.as_str().cmp(attr(b.1).key.as_str()))
        });
        out.write_all(b"{")?;
        let mut previous: Option<&str> = None;
        for &(name, i) in &self.current {
            let label = names[name].1.as_str();
            if previous == Some(label) {
                out.write_all(b";")?;
            } else {
                if previous.is_some() {
                    out.write_all(b"\",")?;
                }
                out.write_all(label.as_bytes())?;
                out.write_all(b"=\"")?;
            }
            write_value(out, &attr(i).value)?;
            previous = Some(label);
        }
        out.write_all(b"\"}")
    }
}

fn write_value<W: Write + ?Sized>(out: &mut W, value: &Value) -> io::Result<()> {
    match value {
        Value::String(s) => write_escaped(out, s.as_str(), true),
        other => write_escaped(out, &other.to_string(), true),
    }
}

/// The text format's escaping: `\` and newline always, `"` in label values.
fn write_escaped<W: Write + ?Sized>(out: &mut W, s: &str, quotes: bool) -> io::Result<()> {
    let special = |b: u8| b == b'\\' || b == b'\n' || (quotes && b == b'"');
    if !s.bytes().any(special) {
        return out.write_all(s.as_bytes());
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        if special(b) {
            out.write_all(&s.as_bytes()[start..i])?;
            out.write_all(match b {
                b'\n' => b"\\n",
                b'\\' => b"\\\\",
                _ => b"\\\"",
            })?;
            start = i + 1;
        }
    }
    out.write_all(&s.as_bytes()[start..])
}

/// Formats sample values as the reference does (`f64`'s `Display`), with a
/// fast path for whole numbers, which nearly all of ours are.
#[derive(Default)]
struct NumberBuf {
    text: String,
}

impl NumberBuf {
    fn format(&mut self, v: f64) -> &[u8] {
        use std::fmt::Write as _;
        self.text.clear();
        // Below 2^53 a whole f64 is an exact integer and Display prints it
        // without a fraction; -0.0 prints as "-0", so it takes the slow path.
        if v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 && !(v == 0.0 && v.is_sign_negative()) {
            let _ = write!(self.text, "{}", v as i64);
        } else {
            let _ = write!(self.text, "{v}");
        }
        self.text.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_reference_rules() {
        for (name, unit, want) in [
            ("k8s.node.condition.status", "{node}", "k8s_node_condition_status"),
            ("k8s.node.cpu.allocatable", "{cpu}", "k8s_node_cpu_allocatable"),
            (
                "kube_node_status.view.age",
                "s",
                "kube_node_status_view_age_seconds",
            ),
            (
                "k8s.cluster.nodes.not_ready",
                "1",
                "k8s_cluster_nodes_not_ready_ratio",
            ),
            (
                "k8s.node.memory.allocatable",
                "By",
                "k8s_node_memory_allocatable_bytes",
            ),
            ("rate", "By/s", "rate_bytes_per_second"),
            ("rate", "1/s", "rate_per_second"),
            ("rate", "{x}/s", "rate_per_second"),
            ("rate", "By/fortnight", "rate"),
            ("0day", "", "_0day"),
            ("nam€_with", "", "nam__with"),
            ("kube_node_info", "", "kube_node_info"),
        ] {
            assert_eq!(metric_name(name, unit), want, "{name} {unit}");
        }
    }

    #[test]
    fn numbers_print_like_display() {
        let mut b = NumberBuf::default();
        for v in [
            0.0,
            -0.0,
            1.0,
            -3.0,
            0.5,
            1_700_000_000.0,
            1e21,
            2.5e-7,
            9_007_199_254_740_993.0,
            f64::NAN,
        ] {
            assert_eq!(std::str::from_utf8(b.format(v)).unwrap(), v.to_string(), "{v}");
        }
    }

    #[test]
    fn labels_merge_sort_and_escape_like_the_reference() {
        let attrs = [
            KeyValue::new("b.x", "2"),
            KeyValue::new("b_x", "1"),
            KeyValue::new("a", "say \"hi\"\\\n"),
        ];
        let refs: Vec<&KeyValue> = attrs.iter().collect();
        let mut out = Vec::new();
        Labels::default().write(&refs, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{a="say \"hi\"\\\n",b_x="2;1"}"#
        );
    }
}
