//! The one field of a certificate the exporter reports: when it expires.
//! rustls parses certificates but does not expose their validity, and a
//! full X.509 parser would add a crate tree to the image for one field, so
//! this walks the DER to `tbsCertificate.validity.notAfter` (RFC 5280 §4.1)
//! and nothing else.

/// One DER element: its tag, its content, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT Version`, present in v2 and v3 certificates.
const VERSION: u8 = 0xa0;

/// The certificate's notAfter, in seconds since the Unix epoch.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (SEQUENCE, certificate, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(certificate)? else {
        return None;
    };
    let mut fields = tbs;
    let (tag, _, rest) = element(fields)?;
    if tag == VERSION {
        fields = rest;
    }
    // serialNumber, signature, issuer, then validity.
    for _ in 0..3 {
        fields = element(fields)?.2;
    }
    let (SEQUENCE, validity, _) = element(fields)? else {
        return None;
    };
    let (_, _, after_not_before) = element(validity)?;
    let (tag, time, _) = element(after_not_before)?;
    let text = std::str::from_utf8(time).ok()?;
    let full = match tag {
        // RFC 5280: YY < 50 is 20YY, else 19YY.
        UTC_TIME if text.len() == 13 => {
            let yy: u32 = text.get(..2)?.parse().ok()?;
            format!("{}{text}", if yy < 50 { "20" } else { "19" })
        }
        GENERALIZED_TIME if text.len() == 15 => text.to_string(),
        _ => return None,
    };
    parse_time(&full)
}

/// `YYYYMMDDHHMMSSZ` to seconds since the epoch.
fn parse_time(t: &str) -> Option<i64> {
    if !t.ends_with('Z') || !t.is_ascii() {
        return None;
    }
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (hh, mm, ss) = (n(8..10)?, n(10..12)?, n(12..14)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_expiring(year: i32, month: u8, day: u8) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["x.example".to_string()]).expect("params");
        params.not_after = rcgen::date_time_ymd(year, month, day);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn reads_not_after_in_both_time_encodings() {
        // rcgen writes UTCTime before 2050 and GeneralizedTime from 2050 on, as RFC 5280 requires.
        for (y, m, d, want) in [
            (2027, 1, 1, 1_798_761_600),
            (2030, 6, 15, 1_907_712_000),
            (2049, 12, 31, 2_524_521_600),
            (2050, 1, 1, 2_524_608_000),
            (2100, 3, 1, 4_107_542_400),
        ] {
            assert_eq!(not_after(&cert_expiring(y, m, d)), Some(want), "{y}-{m}-{d}");
        }
    }

    #[test]
    fn garbage_is_none_never_a_panic() {
        let good = cert_expiring(2030, 1, 1);
        for cut in 0..good.len() {
            let _ = not_after(&good[..cut]);
        }
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        for t in [
            "20301301000000Z",
            "2030010100000Z",
            "20300101000000+",
            "2030010100000ZZ",
        ] {
            assert_eq!(parse_time(t), None, "{t}");
        }
        assert_eq!(parse_time("19700101000000Z"), Some(0));
    }
}
