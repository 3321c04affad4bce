//! OTLP metric export requests written as protobuf bytes, piece by piece.
//!
//! The per-node families are kept encoded between exports (see
//! [`crate::telemetry::pipeline::pass`]), so an export only has to copy their points into
//! requests and stamp the time. Protobuf allows that: a message's fields
//! may come in any order, and a repeated field is written one element at a
//! time. So the resource and scope are encoded once (by opentelemetry-proto's
//! own types), each metric's descriptor once, each point's attributes and
//! value once while its node is unchanged, and only the two timestamps,
//! written last in every point, change from one export to the next.

use bytes::Bytes;
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::InstrumentationScope,
    metrics::v1::{Metric, ResourceMetrics, ScopeMetrics, number_data_point},
    resource::v1::Resource,
};
use prost::{
    Message,
    encoding::{WireType, encode_key, encode_varint, encoded_len_varint},
};

// Field numbers, from opentelemetry/proto/collector/metrics/v1/metrics_service.proto
// and opentelemetry/proto/metrics/v1/metrics.proto.
const REQUEST_RESOURCE_METRICS: u32 = 1;
const RESOURCE_METRICS_SCOPE_METRICS: u32 = 2;
const SCOPE_METRICS_METRICS: u32 = 2;
const METRIC_GAUGE: u32 = 5;
const METRIC_SUM: u32 = 7;
const DATA_POINTS: u32 = 1;
const SUM_AGGREGATION_TEMPORALITY: u32 = 2;
const SUM_IS_MONOTONIC: u32 = 3;
const POINT_START_TIME: u32 = 2;
const POINT_TIME: u32 = 3;

/// Bytes the two timestamps add to a point: a one-byte key and eight bytes each.
const POINT_AS_DOUBLE: u32 = 4;
const POINT_AS_INT: u32 = 6;
const POINT_ATTRIBUTES: u32 = 7;
const KEY_VALUE_KEY: u32 = 1;
const KEY_VALUE_VALUE: u32 = 2;
const ANY_STRING: u32 = 1;
const ANY_BOOL: u32 = 2;
const ANY_INT: u32 = 3;
const ANY_DOUBLE: u32 = 4;
const TIMES_LEN: usize = 18;

/// One export request, encoded.
#[derive(Clone, Debug)]
pub struct Part {
    /// The encoded `ExportMetricsServiceRequest`.
    pub bytes: Bytes,
    /// Data points in it.
    pub points: usize,
    /// Metric entries in it (a metric split over requests counts in each).
    pub metrics: usize,
}

impl Part {
    /// A request of opentelemetry-proto's types, encoded.
    pub fn encode(request: &ExportMetricsServiceRequest) -> Part {
        let metrics = request
            .resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .map(|sm| sm.metrics.len())
            .sum();
        Part {
            points: super::chunks::request_points(request),
            metrics,
            bytes: Bytes::from(request.encode_to_vec()),
        }
    }
}

fn key_and_len(field: u32, len: usize, out: &mut Vec<u8>) {
    encode_key(field, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

fn field_len(field: u32, len: usize) -> usize {
    prost::encoding::key_len(field) + encoded_len_varint(len as u64) + len
}

/// Where every request's metrics come from: the resource and the
/// instrumentation scope, each encoded once without its children.
#[derive(Clone, Debug)]
pub struct Origin {
    /// A `ResourceMetrics` without scope metrics.
    resource_metrics: Vec<u8>,
    /// A `ScopeMetrics` without metrics.
    scope_metrics: Vec<u8>,
}

impl Origin {
    /// The origin of metrics from `resource`, under `scope`.
    pub fn new(resource: Resource, resource_schema_url: String, scope: InstrumentationScope) -> Origin {
        Origin {
            resource_metrics: ResourceMetrics {
                resource: Some(resource),
                scope_metrics: Vec::new(),
                schema_url: resource_schema_url,
            }
            .encode_to_vec(),
            scope_metrics: ScopeMetrics {
                scope: Some(scope),
                metrics: Vec::new(),
                schema_url: String::new(),
            }
            .encode_to_vec(),
        }
    }

    /// The origin the SDK gives metrics of `resource` from the meter `meter`.
    pub fn of(resource: &opentelemetry_sdk::Resource, meter: &'static str) -> Origin {
        let scope = opentelemetry::InstrumentationScope::builder(meter).build();
        Origin::new(
            resource.into(),
            resource.schema_url().map(str::to_string).unwrap_or_default(),
            (&scope, None).into(),
        )
    }
}

/// What a metric's points are: gauges (one instant each) or a cumulative
/// sum (counted since a start time that holds from export to export).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A gauge.
    Gauge,
    /// A sum with this `AggregationTemporality` and monotonicity.
    Sum { temporality: i32, monotonic: bool },
}

/// A metric's descriptor (name, description, unit, and gauge or sum), encoded.
#[derive(Clone, Debug)]
pub struct Descriptor {
    /// The metric without its data.
    metric: Vec<u8>,
    shape: Shape,
}

impl Descriptor {
    /// The descriptor of `metric`, if its points are numbers (a gauge or a sum).
    #[cfg(test)]
    pub fn of(metric: &Metric) -> Option<Descriptor> {
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        let shape = match metric.data.as_ref()? {
            Data::Gauge(_) => Shape::Gauge,
            Data::Sum(s) => Shape::Sum {
                temporality: s.aggregation_temporality,
                monotonic: s.is_monotonic,
            },
            _ => return None,
        };
        let metric = Metric {
            name: metric.name.clone(),
            description: metric.description.clone(),
            unit: metric.unit.clone(),
            metadata: metric.metadata.clone(),
            data: None,
        }
        .encode_to_vec();
        Some(Descriptor { metric, shape })
    }

    /// The metric with `points` as its data: for requests built whole (one
    /// resource per node) instead of written piece by piece.
    pub fn metric_with(
        &self,
        points: Vec<opentelemetry_proto::tonic::metrics::v1::NumberDataPoint>,
    ) -> Metric {
        use opentelemetry_proto::tonic::metrics::v1::{Gauge, Sum, metric::Data};
        let mut metric = Metric::decode(self.metric.as_slice()).unwrap_or_default();
        metric.data = Some(match self.shape {
            Shape::Gauge => Data::Gauge(Gauge { data_points: points }),
            Shape::Sum {
                temporality,
                monotonic,
            } => Data::Sum(Sum {
                data_points: points,
                aggregation_temporality: temporality,
                is_monotonic: monotonic,
            }),
        });
        metric
    }

    /// True for a sum, whose points carry a start time.
    pub fn is_sum(&self) -> bool {
        matches!(self.shape, Shape::Sum { .. })
    }

    /// The fields of the gauge or sum message that follow its points.
    fn trailer(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Shape::Sum {
            temporality,
            monotonic,
        } = self.shape
        {
            prost::encoding::int32::encode(SUM_AGGREGATION_TEMPORALITY, &temporality, &mut out);
            prost::encoding::bool::encode(SUM_IS_MONOTONIC, &monotonic, &mut out);
        }
        out
    }
}

/// A point of `attrs` (sorted by key, each key once, as the SDK collects
/// them) with `value`, encoded without timestamps into `out` (cleared
/// first): the bytes prost writes for opentelemetry-proto's conversion of a
/// collected point, written straight from the readings without building the
/// message (its attribute keys and values would each be a new `String`).
pub fn encode_point(attrs: &[opentelemetry::KeyValue], value: number_data_point::Value, out: &mut Vec<u8>) {
    use number_data_point::Value as V;
    use opentelemetry::Value as A;
    out.clear();
    // prost writes fields in tag order: the value (4 or 6) before the attributes (7).
    match value {
        V::AsDouble(v) => prost::encoding::double::encode(POINT_AS_DOUBLE, &v, out),
        V::AsInt(v) => prost::encoding::sfixed64::encode(POINT_AS_INT, &v, out),
    }
    for kv in attrs {
        let key = kv.key.as_str();
        // AnyValue: the one field of its oneof (string 1, bool 2, int 3, double 4).
        let any_len = match &kv.value {
            A::String(v) => field_len(ANY_STRING, v.as_str().len()),
            A::Bool(_) => 2,
            A::I64(v) => 1 + encoded_len_varint(*v as u64),
            A::F64(_) => 9,
            // Arrays (no family emits one) take prost's way.
            other => {
                let attr = opentelemetry_proto::tonic::common::v1::KeyValue::from(
                    &opentelemetry::KeyValue::new(kv.key.clone(), other.clone()),
                );
                encode_key(POINT_ATTRIBUTES, WireType::LengthDelimited, out);
                encode_varint(attr.encoded_len() as u64, out);
                attr.encode_raw(out);
                continue;
            }
        };
        // proto3 leaves an empty string out; the AnyValue oneof is always written.
        let key_len = if key.is_empty() {
            0
        } else {
            field_len(KEY_VALUE_KEY, key.len())
        };
        let kv_len = key_len + field_len(KEY_VALUE_VALUE, any_len);
        encode_key(POINT_ATTRIBUTES, WireType::LengthDelimited, out);
        encode_varint(kv_len as u64, out);
        if !key.is_empty() {
            encode_key(KEY_VALUE_KEY, WireType::LengthDelimited, out);
            encode_varint(key.len() as u64, out);
            out.extend_from_slice(key.as_bytes());
        }
        encode_key(KEY_VALUE_VALUE, WireType::LengthDelimited, out);
        encode_varint(any_len as u64, out);
        match &kv.value {
            A::String(v) => {
                encode_key(ANY_STRING, WireType::LengthDelimited, out);
                encode_varint(v.as_str().len() as u64, out);
                out.extend_from_slice(v.as_str().as_bytes());
            }
            A::Bool(v) => prost::encoding::bool::encode(ANY_BOOL, v, out),
            A::I64(v) => prost::encoding::int64::encode(ANY_INT, v, out),
            A::F64(v) => prost::encoding::double::encode(ANY_DOUBLE, v, out),
            _ => {}
        }
    }
}

/// The descriptor of a metric with no data yet: a gauge, or a cumulative monotonic sum.
pub fn descriptor(name: &str, description: &str, unit: &str, monotonic_sum: bool) -> Descriptor {
    let shape = if monotonic_sum {
        Shape::Sum {
            temporality: opentelemetry_proto::tonic::metrics::v1::AggregationTemporality::Cumulative as i32,
            monotonic: true,
        }
    } else {
        Shape::Gauge
    };
    let metric = Metric {
        name: name.to_owned(),
        description: description.to_owned(),
        unit: unit.to_owned(),
        metadata: Vec::new(),
        data: None,
    }
    .encode_to_vec();
    Descriptor { metric, shape }
}

#[cfg(test)]
/// A data point without its timestamps, encoded: what stays the same from one export to the next.
pub fn point_body(point: &mut opentelemetry_proto::tonic::metrics::v1::NumberDataPoint) -> Vec<u8> {
    point.start_time_unix_nano = 0;
    point.time_unix_nano = 0;
    point.encode_to_vec()
}

/// Writes requests of at most `max` points each, handing each to a sink
/// as soon as it is full.
pub struct Writer<'a, F: FnMut(Part) -> bool> {
    origin: &'a Origin,
    max: usize,
    time: [u8; 8],
    /// The start time of cumulative sums.
    start: [u8; 8],
    sink: F,
    /// False once the sink refused a part: nothing more is wanted.
    open: bool,
    /// The metric being written: its descriptor, its points so far in this
    /// request, and the fields that close its gauge or sum.
    descriptor: Vec<u8>,
    field: u32,
    trailer: Vec<u8>,
    data: Vec<u8>,
    data_points: usize,
    /// This request's metrics, each a `ScopeMetrics.metrics` field.
    metrics: Vec<u8>,
    metric_count: usize,
    points: usize,
}

impl<'a, F: FnMut(Part) -> bool> Writer<'a, F> {
    /// A writer stamping every point with `time_unix_nano`. A gauge's point
    /// starts at that time too (one instant, which is also what Cloud
    /// Monitoring requires); a sum's at `start_unix_nano`.
    pub fn new(origin: &'a Origin, max: usize, time_unix_nano: u64, start_unix_nano: u64, sink: F) -> Self {
        Writer {
            origin,
            max: max.max(1),
            time: time_unix_nano.to_le_bytes(),
            start: start_unix_nano.to_le_bytes(),
            sink,
            open: true,
            descriptor: Vec::new(),
            field: METRIC_GAUGE,
            trailer: Vec::new(),
            data: Vec::new(),
            data_points: 0,
            metrics: Vec::new(),
            metric_count: 0,
            points: 0,
        }
    }

    /// True while the sink still takes parts.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Starts a metric.
    pub fn begin(&mut self, descriptor: &Descriptor) {
        self.end();
        self.descriptor.clear();
        self.descriptor.extend_from_slice(&descriptor.metric);
        self.trailer = descriptor.trailer();
        self.field = match descriptor.shape {
            Shape::Gauge => METRIC_GAUGE,
            Shape::Sum { .. } => METRIC_SUM,
        };
    }

    /// Adds a point (see [`point_body`]) to the current metric. False once the sink takes no more.
    pub fn point(&mut self, body: &[u8]) -> bool {
        if self.points == self.max {
            self.end();
            self.flush();
        }
        key_and_len(DATA_POINTS, body.len() + TIMES_LEN, &mut self.data);
        self.data.extend_from_slice(body);
        let start = if self.field == METRIC_SUM {
            &self.start
        } else {
            &self.time
        };
        encode_key(POINT_START_TIME, WireType::SixtyFourBit, &mut self.data);
        self.data.extend_from_slice(start);
        encode_key(POINT_TIME, WireType::SixtyFourBit, &mut self.data);
        self.data.extend_from_slice(&self.time);
        self.data_points += 1;
        self.points += 1;
        self.open
    }

    /// Closes the current metric's entry in this request, if it has points.
    pub fn end(&mut self) {
        if self.data_points == 0 {
            return;
        }
        let data_len = self.data.len() + self.trailer.len();
        let data = field_len(self.field, data_len);
        key_and_len(
            SCOPE_METRICS_METRICS,
            self.descriptor.len() + data,
            &mut self.metrics,
        );
        self.metrics.extend_from_slice(&self.descriptor);
        key_and_len(self.field, data_len, &mut self.metrics);
        self.metrics.extend_from_slice(&self.data);
        self.metrics.extend_from_slice(&self.trailer);
        self.data.clear();
        self.data_points = 0;
        self.metric_count += 1;
    }

    /// Sends the request written so far, if it has points.
    fn flush(&mut self) {
        if self.points == 0 || !self.open {
            return;
        }
        let sm_len = self.origin.scope_metrics.len() + self.metrics.len();
        let rm_len = self.origin.resource_metrics.len() + field_len(RESOURCE_METRICS_SCOPE_METRICS, sm_len);
        let mut out = Vec::with_capacity(field_len(REQUEST_RESOURCE_METRICS, rm_len));
        key_and_len(REQUEST_RESOURCE_METRICS, rm_len, &mut out);
        out.extend_from_slice(&self.origin.resource_metrics);
        key_and_len(RESOURCE_METRICS_SCOPE_METRICS, sm_len, &mut out);
        out.extend_from_slice(&self.origin.scope_metrics);
        out.extend_from_slice(&self.metrics);
        let part = Part {
            bytes: Bytes::from(out),
            points: self.points,
            metrics: self.metric_count,
        };
        self.metrics.clear();
        self.metric_count = 0;
        self.points = 0;
        self.open = (self.sink)(part);
    }

    /// Sends what is left. False if the sink stopped taking parts.
    pub fn finish(mut self) -> bool {
        self.end();
        self.flush();
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::{
        common::v1::{AnyValue, KeyValue, any_value},
        metrics::v1::{AggregationTemporality, Gauge, NumberDataPoint, Sum, metric::Data, number_data_point},
    };

    fn point(node: &str, v: i64) -> NumberDataPoint {
        NumberDataPoint {
            attributes: vec![KeyValue {
                key: "k8s.node.name".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(node.into())),
                }),
                ..Default::default()
            }],
            value: Some(number_data_point::Value::AsInt(v)),
            start_time_unix_nano: 5,
            time_unix_nano: 6,
            ..Default::default()
        }
    }

    fn metric(name: &str) -> Metric {
        Metric {
            name: name.into(),
            description: format!("{name} help"),
            unit: "1".into(),
            ..Default::default()
        }
    }

    fn gauge(name: &str, points: Vec<NumberDataPoint>) -> Metric {
        Metric {
            data: Some(Data::Gauge(Gauge { data_points: points })),
            ..metric(name)
        }
    }

    fn sum(name: &str, points: Vec<NumberDataPoint>) -> Metric {
        Metric {
            data: Some(Data::Sum(Sum {
                data_points: points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })),
            ..metric(name)
        }
    }

    fn descriptor(metric: &Metric) -> Descriptor {
        Descriptor::of(metric).expect("a gauge or a sum")
    }

    #[test]
    fn requests_decode_as_opentelemetry_proto_writes_them() {
        let resource = Resource {
            attributes: vec![KeyValue {
                key: "service.name".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("kube-node-status".into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let scope = InstrumentationScope {
            name: "kube-node-status".into(),
            ..Default::default()
        };
        let origin = Origin::new(resource.clone(), "https://schema".into(), scope.clone());
        let mut parts = Vec::new();
        let mut w = Writer::new(&origin, 3, 42, 7, |p| {
            parts.push(p);
            true
        });
        // 4 points of `a`, 1 of `b` and 2 of `c` in requests of 3: [a a a] [a b c] [c].
        w.begin(&descriptor(&gauge("a", vec![])));
        for i in 0..4 {
            assert!(w.point(&point_body(&mut point(&format!("n{i}"), i))));
        }
        w.begin(&descriptor(&gauge("b", vec![])));
        w.point(&point_body(&mut point("n9", 9)));
        w.begin(&descriptor(&sum("c", vec![])));
        w.point(&point_body(&mut point("n1", 1)));
        w.point(&point_body(&mut point("n2", 2)));
        assert!(w.finish());

        let decoded: Vec<_> = parts
            .iter()
            .map(|p| ExportMetricsServiceRequest::decode(p.bytes.clone()).expect("valid protobuf"))
            .collect();
        let stamped = |start: u64| {
            move |mut p: NumberDataPoint| {
                p.start_time_unix_nano = start;
                p.time_unix_nano = 42;
                p
            }
        };
        let points = |names: &[(&str, i64)], start: u64| -> Vec<NumberDataPoint> {
            names
                .iter()
                .map(|(n, v)| point(n, *v))
                .map(stamped(start))
                .collect()
        };
        let request = |metrics: Vec<Metric>| ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope.clone()),
                    metrics,
                    schema_url: String::new(),
                }],
                schema_url: "https://schema".into(),
            }],
        };
        assert_eq!(
            decoded,
            vec![
                request(vec![gauge("a", points(&[("n0", 0), ("n1", 1), ("n2", 2)], 42))]),
                request(vec![
                    gauge("a", points(&[("n3", 3)], 42)),
                    gauge("b", points(&[("n9", 9)], 42)),
                    sum("c", points(&[("n1", 1)], 7)),
                ]),
                request(vec![sum("c", points(&[("n2", 2)], 7))]),
            ]
        );
        let counts: Vec<_> = parts.iter().map(|p| (p.points, p.metrics)).collect();
        assert_eq!(counts, vec![(3, 1), (3, 3), (1, 1)]);
    }

    #[test]
    fn a_sink_that_stops_stops_the_writer() {
        let origin = Origin::new(
            Resource::default(),
            String::new(),
            InstrumentationScope::default(),
        );
        let mut sent = 0;
        let mut w = Writer::new(&origin, 1, 1, 1, |_| {
            sent += 1;
            false
        });
        w.begin(&descriptor(&gauge("a", vec![])));
        assert!(w.point(&point_body(&mut point("n0", 0))));
        assert!(
            !w.point(&point_body(&mut point("n1", 1))),
            "the first part was refused"
        );
        assert!(!w.finish());
        assert_eq!(sent, 1);
    }

    #[test]
    fn points_written_directly_are_the_bytes_prost_writes() {
        use opentelemetry::{KeyValue as K, Value};
        let attrs = vec![
            K::new("k8s.node.name", "node-1"),
            K::new("", "no key"),
            K::new("empty", ""),
            K::new("long", "x".repeat(300)),
            K::new("non-ascii", "zone ✓ \"q\""),
            K::new("int", -7i64),
            K::new("big", i64::MAX),
            K::new("flag", true),
            K::new("no", false),
            K::new("ratio", 0.25),
            K::new("zero", 0.0),
            K::new("list", Value::Array(vec![1i64, 2].into())),
        ];
        let mut out = Vec::new();
        for value in [
            number_data_point::Value::AsInt(1),
            number_data_point::Value::AsInt(0),
            number_data_point::Value::AsInt(-1),
            number_data_point::Value::AsDouble(0.0),
            number_data_point::Value::AsDouble(-0.0),
            number_data_point::Value::AsDouble(1e21),
        ] {
            for n in [0, 1, attrs.len()] {
                let want = NumberDataPoint {
                    attributes: attrs[..n].iter().map(Into::into).collect(),
                    value: Some(value),
                    ..Default::default()
                }
                .encode_to_vec();
                encode_point(&attrs[..n], value, &mut out);
                assert_eq!(out, want, "{n} attributes, {value:?}");
            }
        }
    }
}
