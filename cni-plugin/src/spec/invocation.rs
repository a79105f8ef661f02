//! The CNI_* environment of one invocation, parsed and validated once.

use std::path::PathBuf;

use super::args::{parse_cni_args, PodArgs};
use super::error::{CniError, Code};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            "VERSION" => Self::Version,
            other => {
                return Err(CniError::new(
                    Code::InvalidEnv,
                    format!("CNI_COMMAND {other:?} is not a CNI verb"),
                ))
            }
        })
    }
}

/// One invocation. Fields a verb does not need may be empty.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    /// Empty when the runtime has no netns any more (DEL after teardown, `ctr`).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub pod: PodArgs,
}

impl Invocation {
    /// Read from a getter so tests need not touch the process environment.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let command = get("CNI_COMMAND")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| CniError::new(Code::InvalidEnv, "CNI_COMMAND is not set"))?;
        let command = Command::parse(&command)?;
        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        let ifname = get("CNI_IFNAME").unwrap_or_default();
        let netns = get("CNI_NETNS")
            .filter(|n| !n.is_empty())
            .map(PathBuf::from);
        let pod = parse_cni_args(&get("CNI_ARGS").unwrap_or_default())?;
        let inv = Self {
            command,
            container_id,
            netns,
            ifname,
            pod,
        };
        inv.validate()?;
        Ok(inv)
    }

    fn validate(&self) -> Result<(), CniError> {
        let needs_attachment = matches!(self.command, Command::Add | Command::Del | Command::Check);
        if !needs_attachment {
            return Ok(());
        }
        validate_container_id(&self.container_id)?;
        validate_ifname(&self.ifname)?;
        if matches!(self.command, Command::Add | Command::Check) && self.netns.is_none() {
            return Err(CniError::new(Code::InvalidEnv, "CNI_NETNS is required"));
        }
        Ok(())
    }
}

/// Same rule as libcni: alphanumeric start, then alphanumerics, `_`, `.`, `-`.
fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            Code::InvalidEnv,
            format!("CNI_CONTAINERID {id:?} is empty or has invalid characters"),
        ))
    }
}

/// Kernel interface-name rules, which libcni also checks.
fn validate_ifname(name: &str) -> Result<(), CniError> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if bad {
        Err(CniError::new(
            Code::InvalidEnv,
            format!("CNI_IFNAME {name:?} is not a valid interface name"),
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn missing_command_is_code_4() {
        let e = Invocation::from_env(env(&[])).unwrap_err();
        assert_eq!(e.code, Code::InvalidEnv);
    }

    #[test]
    fn add_needs_netns_but_del_does_not() {
        let base = [("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")];
        let add = [&base[..], &[("CNI_COMMAND", "ADD")]].concat();
        assert_eq!(
            Invocation::from_env(env(&add)).unwrap_err().code,
            Code::InvalidEnv
        );
        let del = [&base[..], &[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")]].concat();
        let inv = Invocation::from_env(env(&del)).unwrap();
        assert!(inv.netns.is_none());
    }

    #[test]
    fn rejects_bad_ids_and_ifnames() {
        for (id, ifn) in [
            ("../x", "eth0"),
            ("abc", "a/b"),
            ("abc", "waytoolongifname0"),
            ("", "eth0"),
        ] {
            let e = env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", id),
                ("CNI_IFNAME", ifn),
            ]);
            assert_eq!(
                Invocation::from_env(e).unwrap_err().code,
                Code::InvalidEnv,
                "{id} {ifn}"
            );
        }
    }

    #[test]
    fn status_needs_nothing_else() {
        let inv = Invocation::from_env(env(&[("CNI_COMMAND", "STATUS")])).unwrap();
        assert_eq!(inv.command, Command::Status);
    }
}
