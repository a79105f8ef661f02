//! CNI error codes and the error JSON a plugin prints on stdout.

use serde::Serialize;

/// Error codes from the CNI spec (section "Error") plus Moat's own (100+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnv = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    /// STATUS: the plugin cannot service ADD requests.
    NotAvailable = 50,
    /// STATUS: not available, and existing attachments may have limited connectivity.
    NotAvailableLimited = 51,
    /// A netlink or sysctl operation failed.
    Kernel = 100,
    /// ADD for a (container id, ifname) that is already attached.
    AlreadyAttached = 101,
    /// Every range has run out of free addresses.
    Exhausted = 102,
    /// CHECK found the attachment different from what ADD made.
    CheckFailed = 103,
    /// Programming the nftables table failed.
    Firewall = 104,
}

/// An error as the runtime sees it: spec code, message, details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Build from any error: message is the top-level error, details the cause chain.
    pub fn from_error(code: Code, err: &(dyn std::error::Error + 'static)) -> Self {
        let mut details = Vec::new();
        let mut cause = err.source();
        while let Some(c) = cause {
            details.push(c.to_string());
            cause = c.source();
        }
        Self::new(code, err.to_string()).with_details(details.join(": "))
    }

    /// The JSON the spec wants on stdout, stamped with the version the caller asked for.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Wire {
            cni_version,
            code: self.code as u32,
            msg: &self.msg,
            details: &self.details,
        })
        .expect("error JSON serialises")
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.code as u32, self.msg)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_spec_fields() {
        let e = CniError::new(Code::Decode, "bad json").with_details("line 1");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
        assert_eq!(v["code"], 6);
        assert_eq!(v["msg"], "bad json");
        assert_eq!(v["details"], "line 1");
        assert_eq!(v["cniVersion"], "1.0.0");
    }

    #[test]
    fn status_codes_match_spec() {
        assert_eq!(Code::NotAvailable as u32, 50);
        assert_eq!(Code::NotAvailableLimited as u32, 51);
        assert_eq!(Code::TryAgainLater as u32, 11);
    }
}
