//! Durations in config files as people write them: a quoted string such as `"5s"`,
//! `"10m"`, `"1h 30m"` (humantime's syntax). For `#[serde(with = "lastmile_proto::duration")]`.
//!
//! The reason for this module over `humantime-serde`: a number where a duration goes
//! (`connect_timeout = 5`) must say which form is expected, not just "expected a
//! duration", since the unit is exactly what the writer left out.

use std::fmt;
use std::time::Duration;

use serde::{Deserializer, Serializer, de};

/// What a refusal says is expected.
const EXPECTED: &str = "a duration in quotes with its unit, such as \"5s\", \"10m\" or \"1h\"";

pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_duration(*value))
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct Text;

    impl de::Visitor<'_> for Text {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(EXPECTED)
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            humantime::parse_duration(text)
                .map_err(|e| E::custom(format_args!("`{text}` is not {EXPECTED}: {e}")))
        }
    }

    deserializer.deserialize_str(Text)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[derive(Debug, serde::Deserialize, serde::Serialize)]
    struct Config {
        #[serde(with = "super")]
        timeout: Duration,
    }

    #[test]
    fn text_with_a_unit_is_read_and_written_back() {
        let c: Config =
            serde_json::from_str(r#"{"timeout": "1h 30m"}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.timeout, Duration::from_secs(5400));
        assert_eq!(
            serde_json::to_string(&c).unwrap_or_default(),
            r#"{"timeout":"1h 30m"}"#
        );
    }

    #[test]
    fn a_number_or_a_bad_unit_says_the_form_expected() {
        let err = |json: &str| {
            serde_json::from_str::<Config>(json)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let number = err(r#"{"timeout": 5}"#);
        assert!(
            number.starts_with("invalid type: integer `5`, expected a duration in quotes with its unit, such as \"5s\""),
            "{number}"
        );
        let unit = err(r#"{"timeout": "5 parsecs"}"#);
        assert!(
            unit.starts_with("`5 parsecs` is not a duration in quotes"),
            "{unit}"
        );
    }
}
