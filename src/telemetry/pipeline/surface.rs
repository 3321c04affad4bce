//! The served surface's self-telemetry: the HTTP server's connections,
//! scrape authentication and the serving certificate ([`crate::surface`]).

use opentelemetry::{KeyValue, metrics::Meter};

use super::instruments::{Sources, names};
/// Registers the surface's instruments that are on.
pub(super) fn register(meter: &Meter, sources: &Sources) {
    use crate::surface::{AuthResult, Lookup};
    let on = |name: &str| sources.settings.enabled(name);
    let surface = &sources.surface;
    if on(names::HTTP_CONNECTIONS) {
        let s = surface.clone();
        meter
            .u64_observable_gauge(names::HTTP_CONNECTIONS)
            .with_unit("{connection}")
            .with_description("HTTP connections open now (at most --max-connections)")
            .with_callback(move |obs| obs.observe(s.open_connections(), &[]))
            .build();
    }
    if on(names::HTTP_REFUSED) {
        let s = surface.clone();
        meter
            .u64_observable_counter(names::HTTP_REFUSED)
            .with_unit("{connection}")
            .with_description(
                "HTTP connections refused: every connection that could make room was serving a request begun under 2 s ago",
            )
            .with_callback(move |obs| obs.observe(s.refused_connections(), &[]))
            .build();
    }
    if on(names::HTTP_EVICTED) {
        let s = surface.clone();
        meter
            .u64_observable_counter(names::HTTP_EVICTED)
            .with_unit("{connection}")
            .with_description(
                "HTTP connections closed to make room for a new one, all --max-connections being open, by state: \
                 idle (the oldest not serving a request: idle, sending its headers, in its TLS handshake), slow \
                 (none idle: the request running longest, past 2 s: a client not reading its response)",
            )
            .with_callback(move |obs| {
                for kind in crate::surface::Evicted::ALL {
                    obs.observe(s.evicted_connections(kind), &[KeyValue::new("state", kind.as_str())]);
                }
            })
            .build();
    }
    if surface.auth_on && on(names::AUTH_REQUESTS) {
        let s = surface.clone();
        meter
            .u64_observable_counter(names::AUTH_REQUESTS)
            .with_unit("{request}")
            .with_description(
                "/metrics requests checked for a bearer token, by result: allowed, unauthenticated (401), \
                 forbidden (403), unavailable (503: the API server did not answer), throttled (429: too many \
                 unknown tokens)",
            )
            .with_callback(move |obs| {
                for r in AuthResult::ALL {
                    obs.observe(s.auth_count(r), &[KeyValue::new("result", r.as_str())]);
                }
            })
            .build();
    }
    if surface.reviews_on && on(names::AUTH_LOOKUPS) {
        let s = surface.clone();
        meter
            .u64_observable_counter(names::AUTH_LOOKUPS)
            .with_unit("{lookup}")
            .with_description(
                "Bearer tokens looked up with --auth-kubernetes, by outcome: cached, reviewed (a TokenReview \
                 sent), merged (joined a review of the same token in flight), rate_limited (an unknown token \
                 over the review rate, answered 429)",
            )
            .with_callback(move |obs| {
                for l in Lookup::ALL {
                    obs.observe(s.lookup_count(l), &[KeyValue::new("outcome", l.as_str())]);
                }
            })
            .build();
    }
    if surface.tls_on && on(names::TLS_EXPIRY) {
        let s = surface.clone();
        meter
            .f64_observable_gauge(names::TLS_EXPIRY)
            .with_unit("s")
            .with_description("When the served TLS certificate expires, in seconds since the Unix epoch (with --tls-cert-file)")
            .with_callback(move |obs| {
                if let Some(t) = s.cert_not_after() {
                    obs.observe(t as f64, &[]);
                }
            })
            .build();
    }
    if surface.tls_on && on(names::TLS_RELOAD_FAILURES) {
        let s = surface.clone();
        meter
            .u64_observable_counter(names::TLS_RELOAD_FAILURES)
            .with_unit("{failure}")
            .with_description("Looks at changed TLS certificate files that did not load; the previous pair stays in service")
            .with_callback(move |obs| obs.observe(s.cert_reload_failures(), &[]))
            .build();
    }
}
