//! A batch's priority: strict, before any fair share. Written `high`, `normal`, `low`, or an
//! integer from [`Priority::MIN`] to [`Priority::MAX`]; the names stand for 10, 0 and -10, so
//! `11` beats `high` and `-11` waits behind `low`. Larger runs first.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(i32);

impl Priority {
    pub const MIN: i32 = -100;
    pub const MAX: i32 = 100;
    pub const HIGH: Priority = Priority(10);
    pub const NORMAL: Priority = Priority(0);
    pub const LOW: Priority = Priority(-10);
    /// The highest there is (the `default` tenant's cap unless configured).
    pub const HIGHEST: Priority = Priority(Self::MAX);

    /// A number in range, else why not.
    pub fn new(value: i64) -> Result<Self, String> {
        if (i64::from(Self::MIN)..=i64::from(Self::MAX)).contains(&value) {
            Ok(Self(value as i32))
        } else {
            Err(format!(
                "priority {value} is out of range: use high, normal, low or a number from {} to {}",
                Self::MIN,
                Self::MAX
            ))
        }
    }

    pub fn value(self) -> i32 {
        self.0
    }
}

impl FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "high" => Ok(Self::HIGH),
            "normal" => Ok(Self::NORMAL),
            "low" => Ok(Self::LOW),
            other => match other.parse::<i64>() {
                Ok(n) => Self::new(n),
                Err(_) => Err(format!(
                    "{s:?} is not a priority: use high, normal, low or a number from {} to {}",
                    Self::MIN,
                    Self::MAX
                )),
            },
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::HIGH => f.write_str("high"),
            Self::NORMAL => f.write_str("normal"),
            Self::LOW => f.write_str("low"),
            Self(n) => write!(f, "{n}"),
        }
    }
}

/// Stored as its display form, so records read `"high"` where they can.
impl Serialize for Priority {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Self::HIGH | Self::NORMAL | Self::LOW => s.serialize_str(&self.to_string()),
            Self(n) => s.serialize_i32(n),
        }
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(i64),
            Name(String),
        }
        match Written::deserialize(d)? {
            Written::Number(n) => Priority::new(n),
            Written::Name(s) => s.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_range() {
        assert_eq!("high".parse::<Priority>(), Ok(Priority::HIGH));
        assert_eq!("Normal".parse::<Priority>(), Ok(Priority::NORMAL));
        assert_eq!("-10".parse::<Priority>(), Ok(Priority::LOW));
        assert_eq!("42".parse::<Priority>().map(Priority::value), Ok(42));
        assert!("101".parse::<Priority>().is_err());
        assert!("urgent".parse::<Priority>().is_err());
        assert!(Priority::HIGH > Priority::NORMAL && Priority::NORMAL > Priority::LOW);
        assert_eq!(Priority::new(7).map(|p| p.to_string()), Ok("7".into()));
    }

    #[test]
    fn serde_round_trips_names_and_numbers() {
        for p in [Priority::HIGH, Priority::LOW, Priority(55)] {
            let text = serde_json::to_string(&p).unwrap_or_default();
            assert_eq!(serde_json::from_str::<Priority>(&text).ok(), Some(p));
        }
        assert_eq!(
            serde_json::to_string(&Priority::HIGH).ok(),
            Some("\"high\"".into())
        );
        assert!(serde_json::from_str::<Priority>("500").is_err());
    }
}
