//! Counters of the served surface: the HTTP server's connections, scrape
//! authentication and the serving certificate. The server, `auth` and `tls`
//! write them; the self-telemetry reads them. A leaf module, so that the
//! telemetry need not depend on the server it is served by.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// How a `/metrics` request's credentials were judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthResult {
    /// Allowed.
    Allowed,
    /// No bearer token, or one that is not valid (401).
    Unauthenticated,
    /// A valid token whose user may not get /metrics (403).
    Forbidden,
    /// The token could not be checked: the API server did not answer (503).
    Unavailable,
    /// Not checked: too many unknown tokens at once (429).
    Throttled,
}

impl AuthResult {
    /// Every result, in the order the counters hold them.
    pub const ALL: [AuthResult; 5] = [
        AuthResult::Allowed,
        AuthResult::Unauthenticated,
        AuthResult::Forbidden,
        AuthResult::Unavailable,
        AuthResult::Throttled,
    ];

    /// The `result` attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::Allowed => "allowed",
            AuthResult::Unauthenticated => "unauthenticated",
            AuthResult::Forbidden => "forbidden",
            AuthResult::Unavailable => "unavailable",
            AuthResult::Throttled => "throttled",
        }
    }
}

/// What became of a token lookup that the cache of API reviews was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Answered from the cache.
    Cached,
    /// A TokenReview (and, for a valid token, a SubjectAccessReview) was sent.
    Reviewed,
    /// Joined a review of the same token already in flight.
    Merged,
    /// Refused without a review: the rate limit for unknown tokens was spent.
    RateLimited,
}

impl Lookup {
    /// Every outcome, in the order the counters hold them.
    pub const ALL: [Lookup; 4] = [
        Lookup::Cached,
        Lookup::Reviewed,
        Lookup::Merged,
        Lookup::RateLimited,
    ];

    /// The `outcome` attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Cached => "cached",
            Lookup::Reviewed => "reviewed",
            Lookup::Merged => "merged",
            Lookup::RateLimited => "rate_limited",
        }
    }
}

/// Why a connection was closed to make room for a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evicted {
    /// It was not serving a request: idle, sending its headers, in its TLS handshake.
    Idle,
    /// Its request had run past the preemption threshold (a client not reading its response).
    Slow,
}

impl Evicted {
    /// Both kinds, in the order the counters hold them.
    pub const ALL: [Evicted; 2] = [Evicted::Idle, Evicted::Slow];

    /// The `state` attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Evicted::Idle => "idle",
            Evicted::Slow => "slow",
        }
    }
}

/// The counters. All start at zero; `cert_not_after` at 0 means no certificate.
#[derive(Debug, Default)]
pub struct SurfaceStats {
    /// Scrapes are authenticated: the request results are worth series.
    pub auth_on: bool,
    /// Tokens are reviewed with the API: the lookups are worth series.
    pub reviews_on: bool,
    /// HTTPS is served: the certificate's series are worth having.
    pub tls_on: bool,
    open: AtomicU64,
    refused: AtomicU64,
    evicted: [AtomicU64; Evicted::ALL.len()],
    auth: [AtomicU64; AuthResult::ALL.len()],
    lookups: [AtomicU64; Lookup::ALL.len()],
    cert_not_after: AtomicI64,
    cert_reload_failures: AtomicU64,
}

impl SurfaceStats {
    /// Counters for a server with scrape authentication `auth_on`, by API
    /// review `reviews_on`, and HTTPS `tls_on`.
    pub fn new(auth_on: bool, reviews_on: bool, tls_on: bool) -> SurfaceStats {
        SurfaceStats {
            auth_on,
            reviews_on,
            tls_on,
            ..SurfaceStats::default()
        }
    }

    /// A connection was accepted and is served.
    pub fn connection_opened(&self) {
        self.open.fetch_add(1, Relaxed);
    }
    /// A served connection ended.
    pub fn connection_closed(&self) {
        self.open.fetch_sub(1, Relaxed);
    }
    /// Connections served now.
    pub fn open_connections(&self) -> u64 {
        self.open.load(Relaxed)
    }
    /// A connection was refused: every slot was serving a young request.
    pub fn connection_refused(&self) {
        self.refused.fetch_add(1, Relaxed);
    }
    /// Connections refused so far.
    pub fn refused_connections(&self) -> u64 {
        self.refused.load(Relaxed)
    }
    /// A connection was closed to make room for a new one.
    pub fn connection_evicted(&self, kind: Evicted) {
        self.evicted[kind as usize].fetch_add(1, Relaxed);
    }
    /// Connections of `kind` closed to make room so far.
    pub fn evicted_connections(&self, kind: Evicted) -> u64 {
        self.evicted[kind as usize].load(Relaxed)
    }
    /// Counts one judged request.
    pub fn auth(&self, result: AuthResult) {
        self.auth[result as usize].fetch_add(1, Relaxed);
    }
    /// Requests judged `result` so far.
    pub fn auth_count(&self, result: AuthResult) -> u64 {
        self.auth[result as usize].load(Relaxed)
    }
    /// Counts one token lookup.
    pub fn lookup(&self, outcome: Lookup) {
        self.lookups[outcome as usize].fetch_add(1, Relaxed);
    }
    /// Token lookups with `outcome` so far.
    pub fn lookup_count(&self, outcome: Lookup) -> u64 {
        self.lookups[outcome as usize].load(Relaxed)
    }
    /// The serving certificate's notAfter, in seconds since the Unix epoch.
    pub fn set_cert_not_after(&self, unix_seconds: i64) {
        self.cert_not_after.store(unix_seconds, Relaxed);
    }
    /// The serving certificate's notAfter, if one is served.
    pub fn cert_not_after(&self) -> Option<i64> {
        Some(self.cert_not_after.load(Relaxed)).filter(|&t| t != 0)
    }
    /// Changed certificate files did not load.
    pub fn cert_reload_failed(&self) {
        self.cert_reload_failures.fetch_add(1, Relaxed);
    }
    /// Failed reloads of the certificate files so far.
    pub fn cert_reload_failures(&self) -> u64 {
        self.cert_reload_failures.load(Relaxed)
    }
}
