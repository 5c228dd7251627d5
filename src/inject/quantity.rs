//! Kubernetes resource quantities (`50m`, `64Mi`, `1.5`, `1e3`) as the
//! proxy's resource annotations carry them. Checked here so that a typo
//! fails at injection, naming the annotation, instead of at `kubectl apply`
//! with a message about the generated container.

/// A quantity's value in base units (cores, bytes), for comparing a request
/// with its limit. `f64` is exact enough for that; the text is what is
/// written into the pod spec.
pub(super) fn parse(text: &str) -> Result<f64, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let digits = number.strip_prefix('+').unwrap_or(number);
    let well_formed = !digits.is_empty()
        && digits.chars().filter(|&c| c == '.').count() <= 1
        && digits.chars().any(|c| c.is_ascii_digit())
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.');
    let value: f64 = match digits.parse() {
        Ok(v) if well_formed => v,
        _ => return Err(invalid(text)),
    };
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => match suffix
            .strip_prefix(['e', 'E'])
            .and_then(|exp| exp.parse::<i32>().ok())
        {
            Some(exp) => 10f64.powi(exp),
            None => return Err(invalid(text)),
        },
    };
    let value = value * scale;
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("{text:?} must be greater than zero"));
    }
    Ok(value)
}

fn invalid(text: &str) -> String {
    format!(
        "{text:?} is not a Kubernetes quantity (a number with an optional suffix: \
         m for milli-CPU, Ki/Mi/Gi for bytes, e.g. 100m or 128Mi)"
    )
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse("50m"), Ok(0.05));
        assert_eq!(parse("1"), Ok(1.0));
        assert_eq!(parse("1.5"), Ok(1.5));
        assert_eq!(parse("64Mi"), Ok(64.0 * 1024.0 * 1024.0));
        assert_eq!(parse("1G"), Ok(1e9));
        assert_eq!(parse("1e3"), Ok(1000.0));
        assert_eq!(parse("+2"), Ok(2.0));
        for bad in [
            "", "m", "1.2.3", "64MB", "-1", "0", "1 Gi", "Mi64", ".", "1e",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
