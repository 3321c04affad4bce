//! Kubernetes resource quantities (`7910m`, `32880584Ki`, `1e3`, `1.5G`), parsed exactly.
//!
//! "Exactly" means the result is the f64 nearest to the quantity's true value:
//! decimal suffixes are applied in the decimal domain and rounded once by the
//! standard library's correctly rounded parser; binary suffixes multiply by a
//! power of two, which loses nothing.

/// Why a quantity did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {0:?}")]
pub struct QuantityError(pub String);

/// Splits `s` into its number and its suffix, checking the number's grammar:
/// an optional sign, digits, and an optional fraction (`1`, `-1.5`, `.5`, `5.`).
fn split(s: &str) -> Option<(&str, &str)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    if matches!(bytes.first(), Some(b'+' | b'-')) {
        i = 1;
    }
    let digits_start = i;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    let mut digits = i - digits_start;
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        digits += i - frac_start;
    }
    (digits > 0).then(|| s.split_at(i))
}

/// Parses a quantity into its value in base units (cores, bytes, count).
pub fn parse(s: &str) -> Result<f64, QuantityError> {
    let err = || QuantityError(s.to_string());
    let (number, suffix) = split(s.trim()).ok_or_else(err)?;
    let decimal_exponent: i32 = match suffix {
        "" => 0,
        "n" => -9,
        "u" => -6,
        "m" => -3,
        "k" => 3,
        "M" => 6,
        "G" => 9,
        "T" => 12,
        "P" => 15,
        "E" => 18,
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => {
            let power = match suffix {
                "Ki" => 10,
                "Mi" => 20,
                "Gi" => 30,
                "Ti" => 40,
                "Pi" => 50,
                _ => 60,
            };
            let n: f64 = number.parse().map_err(|_| err())?;
            return Ok(n * 2f64.powi(power));
        }
        e if e.starts_with(['e', 'E']) => {
            let exp = &e[1..];
            let unsigned = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            exp.parse().map_err(|_| err())?
        }
        _ => return Err(err()),
    };
    let value: f64 = format!("{number}e{decimal_exponent}")
        .parse()
        .map_err(|_| err())?;
    if value.is_finite() { Ok(value) } else { Err(err()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_suffix() {
        let cases: &[(&str, f64)] = &[
            ("0", 0.0),
            ("8", 8.0),
            ("7910m", 7.91),
            ("250m", 0.25),
            ("1500u", 0.0015),
            ("1n", 1e-9),
            ("1k", 1e3),
            ("1M", 1e6),
            ("1.5G", 1.5e9),
            ("2T", 2e12),
            ("3P", 3e15),
            ("1E", 1e18),
            ("1Ki", 1024.0),
            ("32880584Ki", 32880584.0 * 1024.0),
            ("1Mi", 1048576.0),
            ("1.5Gi", 1.5 * 1073741824.0),
            ("1Ti", 1099511627776.0),
            ("1Pi", 1125899906842624.0),
            ("1Ei", 1152921504606846976.0),
            ("1e3", 1000.0),
            ("1E3", 1000.0),
            ("1e-3", 0.001),
            ("1e+3", 1000.0),
            ("47060071478", 47060071478.0),
            ("-1", -1.0),
            ("+2", 2.0),
            (".5", 0.5),
            ("5.", 5.0),
            (" 110 ", 110.0),
        ];
        for (s, want) in cases {
            assert_eq!(parse(s), Ok(*want), "{s}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_quantity() {
        for s in [
            "", "m", "Ki", "abc", "1x", "1KiB", "1e", "1e+", "1ee3", "1.2.3", "--1", "1 Gi", "0x10", "1e3.5",
            "1mi", "NaN", "inf", "1e999",
        ] {
            assert!(parse(s).is_err(), "{s:?} parsed");
        }
    }

    const DECIMAL: [(&str, i32); 10] = [
        ("n", -9),
        ("u", -6),
        ("m", -3),
        ("", 0),
        ("k", 3),
        ("M", 6),
        ("G", 9),
        ("T", 12),
        ("P", 15),
        ("E", 18),
    ];
    const BINARY: [(&str, i32); 6] = [
        ("Ki", 10),
        ("Mi", 20),
        ("Gi", 30),
        ("Ti", 40),
        ("Pi", 50),
        ("Ei", 60),
    ];

    proptest! {
        #[test]
        fn never_panics(s in ".{0,24}") {
            let _ = parse(&s);
        }

        #[test]
        fn integers_with_decimal_suffixes(n in -1_000_000_000i64..1_000_000_000, i in 0usize..DECIMAL.len()) {
            let (suffix, exp) = DECIMAL[i];
            let want: f64 = format!("{n}e{exp}").parse().unwrap();
            prop_assert_eq!(parse(&format!("{n}{suffix}")), Ok(want));
            // The same value written with an exponent reads the same.
            prop_assert_eq!(parse(&format!("{n}e{exp}")), Ok(want));
        }

        #[test]
        fn integers_with_binary_suffixes_are_exact(n in 0u64..(1 << 30), i in 0usize..BINARY.len()) {
            let (suffix, power) = BINARY[i];
            let want = n as f64 * 2f64.powi(power);
            prop_assert_eq!(parse(&format!("{n}{suffix}")), Ok(want));
        }

        #[test]
        fn milli_is_a_thousandth(n in 0u32..10_000_000) {
            let got = parse(&format!("{n}m")).unwrap();
            let want = n as f64 / 1000.0;
            // Both are the f64 nearest to n/1000: identical, not merely close.
            prop_assert_eq!(got, want);
        }

        #[test]
        fn fractions_match_the_decimal_value(int in 0u32..100_000, frac in 0u32..1000, i in 0usize..DECIMAL.len()) {
            let (suffix, exp) = DECIMAL[i];
            let text = format!("{int}.{frac:03}");
            let want: f64 = format!("{text}e{exp}").parse().unwrap();
            prop_assert_eq!(parse(&format!("{text}{suffix}")), Ok(want));
        }
    }
}
