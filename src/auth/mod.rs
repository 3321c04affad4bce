//! Authentication of scrapes.
//!
//! `/metrics` names every node of the cluster; where the network cannot be
//! trusted, scrapes carry `Authorization: Bearer <token>`, checked either
//! against a token file (a mounted Secret, [`TokenFile`]) or with the
//! Kubernetes API as kube-rbac-proxy does (TokenReview, then
//! SubjectAccessReview for `get` on the `/metrics` path, [`Reviewer`]).
//! A token never reaches a log line or an error message, and is not kept:
//! caches hold its SHA-256.

mod lookups;
mod review;
mod token_file;

pub use review::Reviewer;
pub use token_file::{TokenFile, TokenFileError};

/// The outcome of checking a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The request may read /metrics.
    Allowed,
    /// No `Authorization: Bearer …` header.
    Missing,
    /// A bearer token that is not valid.
    Invalid,
    /// A valid token whose user may not read /metrics.
    Forbidden,
    /// The token could not be checked now (the API server did not answer).
    Unavailable,
    /// The token was not checked: too many unknown tokens were presented at once.
    Throttled,
}

impl Verdict {
    /// What the counters call it.
    pub fn result(self) -> crate::surface::AuthResult {
        use crate::surface::AuthResult;
        match self {
            Verdict::Allowed => AuthResult::Allowed,
            Verdict::Missing | Verdict::Invalid => AuthResult::Unauthenticated,
            Verdict::Forbidden => AuthResult::Forbidden,
            Verdict::Unavailable => AuthResult::Unavailable,
            Verdict::Throttled => AuthResult::Throttled,
        }
    }
}

/// How scrapes are authenticated.
pub enum Authenticator {
    /// Against a token file.
    File(TokenFile),
    /// With the Kubernetes API.
    Kubernetes(Reviewer),
}

impl Authenticator {
    /// Checks an `Authorization` header value sent from `peer`.
    pub async fn check(&self, authorization: Option<&[u8]>, peer: Option<std::net::IpAddr>) -> Verdict {
        match self {
            Authenticator::File(f) => f.check(authorization),
            Authenticator::Kubernetes(r) => r.check(authorization, peer).await,
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_headers_table() {
        for (header, want) in [
            (&b"Bearer abc"[..], Some(&b"abc"[..])),
            (b"bearer abc", Some(b"abc")),
            (b"BEARER  abc ", Some(b"abc")),
            (b"Bearer ", None),
            (b"Bearer", None),
            (b"Basic YWJjOmRlZg==", None),
            (b"abc", None),
            (b"", None),
        ] {
            assert_eq!(bearer(header), want, "{:?}", String::from_utf8_lossy(header));
        }
    }
}
