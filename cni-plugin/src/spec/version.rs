//! The CNI spec versions Moat speaks, and what each allows.

use super::error::{CniError, Code};

pub const SUPPORTED: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];
pub const LATEST: &str = "1.1.0";

/// A supported spec version; ordered so features can be gated with `>=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        match s {
            "0.4.0" => Ok(Self::V0_4_0),
            "1.0.0" => Ok(Self::V1_0_0),
            "1.1.0" => Ok(Self::V1_1_0),
            other => Err(CniError::new(
                Code::IncompatibleVersion,
                format!("unsupported cniVersion {other:?}"),
            )
            .with_details(format!("supported: {}", SUPPORTED.join(", ")))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }
}

/// Output of the VERSION verb.
pub fn version_json(asked: Option<&str>) -> String {
    serde_json::json!({
        "cniVersion": asked.unwrap_or(LATEST),
        "supportedVersions": SUPPORTED,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_supported_and_rejects_others() {
        assert!(Version::parse("0.4.0").unwrap() < Version::parse("1.1.0").unwrap());
        assert_eq!(
            Version::parse("0.3.1").unwrap_err().code,
            Code::IncompatibleVersion
        );
        assert_eq!(
            Version::parse("2.0.0").unwrap_err().code,
            Code::IncompatibleVersion
        );
    }

    #[test]
    fn version_output_lists_all() {
        let v: serde_json::Value = serde_json::from_str(&version_json(Some("1.0.0"))).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 3);
    }
}
