//! Splitting one OTLP metrics export into requests of at most N data points.
//!
//! Some receivers cap a request (Google's Telemetry API takes at most 200
//! points), and the SDK's exporter sends a whole collection at once. Splitting
//! keeps every metric's descriptor and resource with each part of its points.

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    metrics::v1::{
        ExponentialHistogram, Gauge, Histogram, Metric, ResourceMetrics, ScopeMetrics, Sum, Summary,
        metric::Data,
    },
};

/// Data points in a metric.
pub fn points(metric: &Metric) -> usize {
    match &metric.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

/// Data points in a whole request.
pub fn request_points(req: &ExportMetricsServiceRequest) -> usize {
    req.resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(points)
        .sum()
}

/// Moves the last `k` data points of `metric` into a metric of their own
/// (same descriptor). From the back, so each cut is O(k): points are
/// moved, never copied, and their order within a metric carries no meaning.
fn take_back(metric: &mut Metric, k: usize) -> Metric {
    fn cut<T>(points: &mut Vec<T>, k: usize) -> Vec<T> {
        let at = points.len().saturating_sub(k);
        points.split_off(at)
    }
    let data = metric.data.as_mut().map(|data| match data {
        Data::Gauge(g) => Data::Gauge(Gauge {
            data_points: cut(&mut g.data_points, k),
        }),
        Data::Sum(s) => Data::Sum(Sum {
            data_points: cut(&mut s.data_points, k),
            aggregation_temporality: s.aggregation_temporality,
            is_monotonic: s.is_monotonic,
        }),
        Data::Histogram(h) => Data::Histogram(Histogram {
            data_points: cut(&mut h.data_points, k),
            aggregation_temporality: h.aggregation_temporality,
        }),
        Data::ExponentialHistogram(h) => Data::ExponentialHistogram(ExponentialHistogram {
            data_points: cut(&mut h.data_points, k),
            aggregation_temporality: h.aggregation_temporality,
        }),
        Data::Summary(s) => Data::Summary(Summary {
            data_points: cut(&mut s.data_points, k),
        }),
    });
    Metric {
        name: metric.name.clone(),
        description: metric.description.clone(),
        unit: metric.unit.clone(),
        metadata: metric.metadata.clone(),
        data,
    }
}

/// Builds requests while keeping each one at most `max` points.
struct Packer {
    max: usize,
    done: Vec<ExportMetricsServiceRequest>,
    current: ExportMetricsServiceRequest,
    used: usize,
}

impl Packer {
    fn flush(&mut self) {
        if self.used > 0 {
            self.done.push(std::mem::take(&mut self.current));
            self.used = 0;
        }
    }

    /// Appends `metric` under `rm`/`sm`, opening a new resource or scope entry when needed.
    fn push(&mut self, rm: &ResourceMetrics, sm: &ScopeMetrics, metric: Metric, n: usize) {
        let same_rm = self
            .current
            .resource_metrics
            .last()
            .is_some_and(|last| last.resource == rm.resource && last.schema_url == rm.schema_url);
        if !same_rm {
            // Field by field: `..rm.clone()` would copy every point of the
            // collection for each part, making the split quadratic.
            self.current.resource_metrics.push(ResourceMetrics {
                resource: rm.resource.clone(),
                scope_metrics: Vec::new(),
                schema_url: rm.schema_url.clone(),
            });
        }
        let Some(target_rm) = self.current.resource_metrics.last_mut() else {
            return;
        };
        let same_sm = target_rm
            .scope_metrics
            .last()
            .is_some_and(|last| last.scope == sm.scope && last.schema_url == sm.schema_url);
        if !same_sm {
            target_rm.scope_metrics.push(ScopeMetrics {
                scope: sm.scope.clone(),
                metrics: Vec::new(),
                schema_url: sm.schema_url.clone(),
            });
        }
        if let Some(target_sm) = target_rm.scope_metrics.last_mut() {
            target_sm.metrics.push(metric);
        }
        self.used += n;
    }
}

/// Splits `req` into requests of at most `max` data points each (`max` ≥ 1).
/// Metrics without points are kept whole (they cost no point).
pub fn split(req: ExportMetricsServiceRequest, max: usize) -> Vec<ExportMetricsServiceRequest> {
    let max = max.max(1);
    let mut p = Packer {
        max,
        done: Vec::new(),
        current: ExportMetricsServiceRequest::default(),
        used: 0,
    };
    for mut rm in req.resource_metrics {
        let scopes = std::mem::take(&mut rm.scope_metrics);
        for mut sm in scopes {
            let metrics = std::mem::take(&mut sm.metrics);
            for mut metric in metrics {
                let mut left = points(&metric);
                if left == 0 {
                    p.push(&rm, &sm, metric, 0);
                    continue;
                }
                while left > 0 {
                    if p.used == p.max {
                        p.flush();
                    }
                    let room = p.max - p.used;
                    if left <= room {
                        p.push(&rm, &sm, metric, left);
                        break;
                    }
                    p.push(&rm, &sm, take_back(&mut metric, room), room);
                    left -= room;
                }
            }
        }
    }
    p.flush();
    if p.done.is_empty() && !p.current.resource_metrics.is_empty() {
        p.done.push(p.current);
    }
    p.done
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::{
        common::v1::{InstrumentationScope, KeyValue},
        metrics::v1::{Gauge, NumberDataPoint, Sum},
        resource::v1::Resource,
    };

    fn gauge(name: &str, n: usize) -> Metric {
        Metric {
            name: name.into(),
            description: format!("{name} help"),
            unit: "1".into(),
            data: Some(Data::Gauge(Gauge {
                data_points: (0..n)
                    .map(|i| NumberDataPoint {
                        attributes: vec![KeyValue {
                            key: "i".into(),
                            ..Default::default()
                        }],
                        time_unix_nano: i as u64,
                        ..Default::default()
                    })
                    .collect(),
            })),
            metadata: vec![],
        }
    }

    fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "kube-node-status".into(),
                        ..Default::default()
                    }),
                    metrics,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    /// (metric name, first point's time) of every point, in order: identifies each point.
    fn flatten(reqs: &[ExportMetricsServiceRequest]) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for req in reqs {
            for rm in &req.resource_metrics {
                assert!(rm.resource.is_some(), "every part keeps the resource");
                for sm in &rm.scope_metrics {
                    assert_eq!(
                        sm.scope.as_ref().map(|s| s.name.as_str()),
                        Some("kube-node-status")
                    );
                    for m in &sm.metrics {
                        assert_eq!(m.description, format!("{} help", m.name), "descriptor kept");
                        if let Some(Data::Gauge(g)) = &m.data {
                            out.extend(g.data_points.iter().map(|p| (m.name.clone(), p.time_unix_nano)));
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn parts_are_at_most_max_points_and_lose_nothing() {
        for (sizes, max) in [
            (vec![450usize, 3, 0, 200, 1], 200usize),
            (vec![10, 10, 10], 200),
            (vec![199, 2], 200),
            (vec![1000], 7),
            (vec![5], 1),
        ] {
            let req = request(
                sizes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| gauge(&format!("m{i}"), *n))
                    .collect(),
            );
            let parts = split(req.clone(), max);
            for part in &parts {
                let n = request_points(part);
                assert!(n <= max, "{sizes:?}/{max}: a part has {n} points");
            }
            let total: usize = sizes.iter().sum();
            assert_eq!(
                parts.len(),
                total.div_ceil(max).max(1),
                "{sizes:?}/{max}: parts are packed full"
            );
            // Every point exactly once; order within a metric carries no meaning.
            let (mut got, mut want) = (flatten(&parts), flatten(std::slice::from_ref(&req)));
            got.sort();
            want.sort();
            assert_eq!(got, want, "{sizes:?}/{max}");
        }
    }

    #[test]
    fn sums_keep_their_temporality() {
        let sum = Metric {
            name: "c".into(),
            description: "c help".into(),
            data: Some(Data::Sum(Sum {
                data_points: vec![NumberDataPoint::default(); 5],
                aggregation_temporality: 2,
                is_monotonic: true,
            })),
            ..Default::default()
        };
        let parts = split(request(vec![sum]), 2);
        assert_eq!(parts.len(), 3);
        for part in parts {
            let m = &part.resource_metrics[0].scope_metrics[0].metrics[0];
            assert!(
                matches!(&m.data, Some(Data::Sum(s)) if s.is_monotonic && s.aggregation_temporality == 2)
            );
        }
    }

    #[test]
    fn an_empty_collection_is_one_empty_request_or_none() {
        assert!(split(ExportMetricsServiceRequest::default(), 200).is_empty());
        assert_eq!(split(request(vec![gauge("empty", 0)]), 200).len(), 1);
    }

    #[test]
    fn splitting_a_large_collection_is_linear() {
        // A 5,000-node collection is ~240,000 points in ~1,200 parts. Copying
        // the whole collection per part (the bug this guards) takes minutes;
        // a linear split takes well under a second even unoptimized.
        let req = request((0..20).map(|i| gauge(&format!("m{i}"), 20_000)).collect());
        let start = std::time::Instant::now();
        let parts = split(req, 200);
        assert_eq!(parts.len(), 2_000);
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }
}
