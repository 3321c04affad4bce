//! Every OTLP setting the standard variables carry, resolved in one place:
//! endpoint, CA certificate, timeout, headers and compression, each from
//! the signal's own variable (`OTEL_EXPORTER_OTLP_METRICS_*`,
//! `…_TRACES_*`) first, then the generic one (`OTEL_EXPORTER_OTLP_*`), as
//! the OpenTelemetry specification orders them. Bad values are refused here,
//! with the variable's name; the exporters downstream read no variable.

use std::{path::PathBuf, time::Duration};

use super::{ConfigError, GOOGLE_TELEMETRY_ENDPOINT, OtlpAuth, OtlpSettings};

/// The OTLP signals this service sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Metrics (`OTEL_EXPORTER_OTLP_METRICS_*`).
    Metrics,
    /// Our own spans (`OTEL_EXPORTER_OTLP_TRACES_*`).
    Traces,
    /// Node condition changes as log records (`OTEL_EXPORTER_OTLP_LOGS_*`).
    Logs,
}

impl Signal {
    fn prefix(self) -> &'static str {
        match self {
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_",
            Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_",
            Signal::Logs => "OTEL_EXPORTER_OTLP_LOGS_",
        }
    }
}

/// The OTLP spec's default endpoint for gRPC.
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4317";
/// The OTLP spec's default timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads one standard variable for `signal`: its own first, then the generic one.
struct Vars<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    signal: Signal,
}

impl Vars<'_> {
    /// The value of `OTEL_EXPORTER_OTLP_{signal}_{name}` or else
    /// `OTEL_EXPORTER_OTLP_{name}`, with the variable it came from; blank counts as unset.
    fn get(&self, name: &str) -> Option<(String, String)> {
        [
            format!("{}{name}", self.signal.prefix()),
            format!("OTEL_EXPORTER_OTLP_{name}"),
        ]
        .into_iter()
        .find_map(|var| {
            (self.env)(&var)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (var, v))
        })
    }
}

/// What the flags say about a signal's connection.
pub struct Flags<'a> {
    /// `--otlp-endpoint`.
    pub endpoint: Option<&'a str>,
    /// `--otlp-auth`.
    pub auth: OtlpAuth,
    /// Points per request, already checked against the auth mode.
    pub max_points_per_request: Option<usize>,
}

/// Resolves `signal`'s connection from the flags and the standard variables.
pub fn resolve(
    signal: Signal,
    flags: &Flags<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<OtlpSettings, ConfigError> {
    let vars = Vars { env, signal };
    // An explicit endpoint (flag or standard variable) wins over Google's default.
    let endpoint = match (flags.endpoint, vars.get("ENDPOINT")) {
        (Some(flag), _) => flag.to_string(),
        (None, Some((_, v))) => v.trim().to_string(),
        (None, None) if flags.auth == OtlpAuth::Google => GOOGLE_TELEMETRY_ENDPOINT.to_string(),
        (None, None) => DEFAULT_ENDPOINT.to_string(),
    };
    let timeout = match vars.get("TIMEOUT") {
        Some((var, v)) => match v.trim().parse::<u64>() {
            // Under a second every request would time out: the same floor as every other duration.
            Ok(ms) if ms >= 1000 => Duration::from_millis(ms),
            Ok(ms) if ms > 0 => {
                return Err(ConfigError::MillisTooShort {
                    var: var.into(),
                    value: ms,
                    least: 1000,
                });
            }
            _ => {
                return Err(ConfigError::BadMillis {
                    var: var.into(),
                    value: v,
                });
            }
        },
        None => DEFAULT_TIMEOUT,
    };
    let gzip = match vars.get("COMPRESSION") {
        Some((var, v)) => match v.trim().to_ascii_lowercase().as_str() {
            "gzip" => true,
            "none" => false,
            _ => {
                return Err(ConfigError::BadValue {
                    var: var.into(),
                    value: v,
                    expected: "`gzip` or `none`",
                });
            }
        },
        None => false,
    };
    let headers = match vars.get("HEADERS") {
        Some((var, v)) => headers(&var, &v)?,
        None => Vec::new(),
    };
    let ca_pem = match vars.get("CERTIFICATE") {
        Some((var, path)) => Some(read_ca(&var, PathBuf::from(path))?),
        None => None,
    };
    Ok(OtlpSettings {
        endpoint,
        ca_pem,
        timeout,
        headers,
        gzip,
        max_points_per_request: flags.max_points_per_request,
        auth: flags.auth,
    })
}

/// Parses `k1=v1,k2=v2` (values percent-encoded, as the OTLP spec says) into pairs.
fn headers(var: &str, value: &str) -> Result<Vec<(String, String)>, ConfigError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or_else(|| ConfigError::Otlp(format!("{var}: cannot use {pair:?} as key=value")))?;
            Ok((k.trim().to_ascii_lowercase(), percent_decode(v.trim())))
        })
        .collect()
}

/// Percent-decodes a header value.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(h) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(h);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a PEM CA bundle, refusing a file without a certificate in it.
fn read_ca(var: &str, path: PathBuf) -> Result<Vec<u8>, ConfigError> {
    let pem = std::fs::read(&path).map_err(|e| ConfigError::BadCertificate {
        var: var.to_string().into(),
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(ConfigError::BadCertificate {
            var: var.to_string().into(),
            path,
            reason: "no PEM certificate in it".into(),
        });
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_with(signal: Signal, pairs: &[(&str, &str)]) -> Result<OtlpSettings, ConfigError> {
        let env = |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        let flags = Flags {
            endpoint: None,
            auth: OtlpAuth::None,
            max_points_per_request: None,
        };
        resolve(signal, &flags, &env)
    }

    #[test]
    fn the_signal_variable_wins_over_the_generic_one() {
        let both = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://metrics:4317"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "9000"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "1500"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=b,Api-Key=x%2Cy"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
        ];
        let m = resolve_with(Signal::Metrics, &both).unwrap();
        assert_eq!(m.endpoint, "http://metrics:4317");
        assert_eq!(m.timeout, Duration::from_millis(1500));
        assert_eq!(
            m.headers,
            [("a".into(), "b".into()), ("api-key".into(), "x,y".into())]
        );
        assert!(!m.gzip, "the traces' compression is not the metrics'");
        let t = resolve_with(Signal::Traces, &both).unwrap();
        assert_eq!(t.endpoint, "http://generic:4317");
        assert_eq!(t.timeout, Duration::from_millis(9000));
        assert!(t.gzip);
        let none = resolve_with(Signal::Metrics, &[]).unwrap();
        assert_eq!(
            (none.endpoint.as_str(), none.timeout, none.gzip),
            (DEFAULT_ENDPOINT, DEFAULT_TIMEOUT, false)
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_variable_that_held_them() {
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "soon"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "0"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "999"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "novalue"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "=v"),
        ] {
            let err = resolve_with(Signal::Metrics, &[(var, value)]).unwrap_err();
            assert!(err.to_string().contains(var), "{var}: {err}");
        }
    }
}
