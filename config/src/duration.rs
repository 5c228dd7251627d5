//! Human durations as operators type them on the command line and in YAML:
//! `90s`, `30m`, `1h`, `24h`, `7d`, `1h30m`. Deliberately small: whole units
//! only, no fractions, no months (their length is ambiguous). Timeouts
//! ([`parse_timeout`]) also take `ms`; lifetimes (certificates, tokens) do
//! not, since they are counted in whole seconds.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("empty duration: write e.g. 30s, 15m, 24h or 7d")]
    Empty,
    #[error("invalid duration {text:?}: write whole numbers with units {units}, e.g. 1h30m")]
    Invalid { text: String, units: &'static str },
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses `1h30m`-style durations (units `s`, `m`, `h`, `d`).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    parse(text, false)
}

/// Parses a timeout: as [`parse_duration`], and `ms` too (`250ms`).
pub fn parse_timeout(text: &str) -> Result<Duration, DurationError> {
    parse(text, true)
}

fn parse(text: &str, millis_allowed: bool) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let invalid = || DurationError::Invalid {
        text: text.to_string(),
        units: if millis_allowed {
            "ms, s, m, h or d"
        } else {
            "s, m, h or d"
        },
    };
    let overflow = || DurationError::Overflow(text.to_string());
    let mut millis: u64 = 0;
    let mut digits = String::new();
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let unit: u64 = match ch {
            'm' if millis_allowed && chars.next_if_eq(&'s').is_some() => 1,
            's' => 1000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return Err(invalid()),
        };
        if digits.is_empty() {
            return Err(invalid());
        }
        let n: u64 = digits.parse().map_err(|_| overflow())?;
        let ms = n.checked_mul(unit).ok_or_else(overflow)?;
        millis = millis.checked_add(ms).ok_or_else(overflow)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(invalid());
    }
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_units_and_combinations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration(" 1h30m "), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_timeout("1m500ms"), Ok(Duration::from_millis(60_500)));
    }

    #[test]
    fn refuses_ambiguous_or_broken_input() {
        for bad in [
            "", "10", "h", "1.5h", "1w", "-1h", "1h 30m", "1H", "ms", "5sm", "1mss",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
            assert!(parse_timeout(bad).is_err(), "{bad:?} should be refused");
        }
        // A lifetime in milliseconds would round to whole seconds.
        assert!(parse_duration("500ms").is_err());
        assert!(matches!(
            parse_duration("99999999999999999999d"),
            Err(DurationError::Overflow(_))
        ));
    }
}
