//! Per-key authorization: which callers may wrap, unwrap, rewrap,
//! administer (describe, rotate, retire), sign with or verify with each key.
//!
//! ```toml
//! [keys.openbao-unseal]
//! backend = "hsm"
//! key_label = "openbao-unseal"
//! allow = { wrap = ["uid:1000"], unwrap = ["uid:1000"], admin = ["uid:0"] }
//! # or: allow = { any = ["uri:spiffe://prod/ns/openbao/sa/openbao"] }
//! ```
//!
//! Principals: `uid:N` and `gid:N` (unix socket peer credentials);
//! `uri:…`, `dns:…`, `cn:…` or `sha256:<fingerprint>` (TLS client
//! certificate); `token:<identity>` (transit tokens); `*` (any
//! authenticated caller). Under the Hardened profile every key needs an
//! `allow` table and everything else is denied.

use std::collections::BTreeMap;

use sealbroker_core::Error;

use crate::broker::caller::Caller;
use crate::config::{Config, ConfigError, Grants, Profile};

/// An operation a grant covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Wrap,
    Unwrap,
    Rewrap,
    /// Describe, rotate, retire versions.
    Admin,
    /// Asymmetric keys: make a signature.
    Sign,
    /// Asymmetric keys: check a signature, read the public key.
    Verify,
    /// RSA encryption key pairs: encrypt to the public key.
    Encrypt,
    /// RSA encryption key pairs: decrypt with the private key.
    Decrypt,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Wrap => "wrap",
            Operation::Unwrap => "unwrap",
            Operation::Rewrap => "rewrap",
            Operation::Admin => "admin",
            Operation::Sign => "sign",
            Operation::Verify => "verify",
            Operation::Encrypt => "encrypt",
            Operation::Decrypt => "decrypt",
        }
    }
}

/// Who may do what to one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KeyAcl(Grants);

impl KeyAcl {
    fn grants(&self, operation: Operation) -> &[String] {
        match operation {
            Operation::Wrap => &self.0.wrap,
            Operation::Unwrap => &self.0.unwrap,
            Operation::Rewrap => &self.0.rewrap,
            Operation::Admin => &self.0.admin,
            Operation::Sign => &self.0.sign,
            Operation::Verify => &self.0.verify,
            Operation::Encrypt => &self.0.encrypt,
            Operation::Decrypt => &self.0.decrypt,
        }
    }

    fn allows(&self, caller: &Caller, operation: Operation) -> bool {
        let principals = caller.principals();
        self.grants(operation)
            .iter()
            .any(|grant| (grant == "*" && caller.is_authenticated()) || principals.iter().any(|p| p == grant))
    }

    fn visible_to(&self, caller: &Caller) -> bool {
        [
            Operation::Wrap,
            Operation::Unwrap,
            Operation::Rewrap,
            Operation::Admin,
            Operation::Sign,
            Operation::Verify,
            Operation::Encrypt,
            Operation::Decrypt,
        ]
        .into_iter()
        .any(|op| self.allows(caller, op))
    }
}

/// The ACLs of every key. Keys without an `allow` table are open (only
/// possible under the Development profile).
#[derive(Debug, Clone, Default)]
pub struct Acls {
    keys: BTreeMap<String, KeyAcl>,
    /// Keys configured without `allow` (Development only): anyone may use them.
    open: std::collections::BTreeSet<String>,
}

impl Acls {
    /// Takes every key's `allow` grants; under Hardened, a key without
    /// them is a start-up error.
    pub fn from_config(config: &Config) -> Result<Acls, ConfigError> {
        let mut keys = BTreeMap::new();
        let mut open = std::collections::BTreeSet::new();
        for (name, spec) in &config.keys {
            match &spec.allow {
                Some(grants) => {
                    keys.insert(name.clone(), KeyAcl(grants.clone()));
                }
                None if config.profile == Profile::Hardened => {
                    return Err(ConfigError::new(
                        format!("keys.{name}.allow"),
                        "is missing: the hardened profile denies every caller by default; grant operations, \
                         e.g. allow = { wrap = [\"uid:1000\"], unwrap = [\"uid:1000\"] }",
                    ));
                }
                None => {
                    open.insert(name.clone());
                }
            }
        }
        Ok(Acls { keys, open })
    }

    /// Succeeds when `caller` may do `operation` on `key`. A denial names
    /// the operation and key, and reads the same whether or not the key
    /// exists, so callers learn nothing about keys they may not use.
    pub fn check(&self, caller: &Caller, operation: Operation, key: &str) -> Result<(), Error> {
        if matches!(caller, Caller::Internal(_)) {
            return Ok(()); // the broker itself (in-process plugin, health probes)
        }
        match self.keys.get(key) {
            Some(acl) if acl.allows(caller, operation) => Ok(()),
            Some(_) => Err(denied(caller, operation, key)),
            // Unknown keys are denied like forbidden ones once any ACL is
            // in force; otherwise the caller hears "unknown key" later.
            None if self.open.contains(key) || !self.is_enforcing() => Ok(()),
            None => Err(denied(caller, operation, key)),
        }
    }

    /// Succeeds when `caller` holds any grant on `key` (enough to describe
    /// it). Denials read like [`check`](Self::check)'s, naming `admin`.
    pub fn check_any(&self, caller: &Caller, key: &str) -> Result<(), Error> {
        if matches!(caller, Caller::Internal(_)) {
            return Ok(());
        }
        match self.keys.get(key) {
            Some(acl) if acl.visible_to(caller) => Ok(()),
            Some(_) => Err(denied(caller, Operation::Admin, key)),
            None if self.open.contains(key) || !self.is_enforcing() => Ok(()),
            None => Err(denied(caller, Operation::Admin, key)),
        }
    }

    /// Whether `caller` may see `key` at all (for listings).
    pub fn visible(&self, caller: &Caller, key: &str) -> bool {
        self.check_any(caller, key).is_ok()
    }

    /// True when at least one key has an ACL.
    pub fn is_enforcing(&self) -> bool {
        !self.keys.is_empty()
    }
}

fn denied(caller: &Caller, operation: Operation, key: &str) -> Error {
    Error::PermissionDenied {
        operation: operation.as_str(),
        key: key.to_owned(),
        caller: caller.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acls(text: &str) -> Result<Acls, ConfigError> {
        Acls::from_config(&Config::parse(text)?)
    }

    const BASE: &str = "profile = \"hardened\"\n[backends.b]\ntype = \"x\"\n[keys.k]\nbackend = \"b\"\n";

    fn unix(uid: u32) -> Caller {
        Caller::Unix {
            uid,
            gid: 100,
            pid: None,
        }
    }

    #[test]
    fn hardened_requires_an_acl_on_every_key() {
        let err = acls(BASE).unwrap_err();
        assert_eq!(err.path, "keys.k.allow");
        assert!(err.message.contains("denies every caller by default"), "{err}");
    }

    #[test]
    fn grants_are_per_operation() {
        let acls = acls(&format!(
            "{BASE}allow = {{ wrap = [\"uid:7\"], unwrap = [\"gid:100\"] }}\n"
        ))
        .unwrap();
        assert!(acls.check(&unix(7), Operation::Wrap, "k").is_ok());
        assert!(acls.check(&unix(8), Operation::Wrap, "k").is_err());
        assert!(acls.check(&unix(8), Operation::Unwrap, "k").is_ok());
        assert!(acls.check(&unix(7), Operation::Admin, "k").is_err());
    }

    #[test]
    fn denial_names_operation_and_key_and_does_not_reveal_existence() {
        let acls = acls(&format!("{BASE}allow = {{ any = [\"uid:7\"] }}\n")).unwrap();
        let real = acls
            .check(&unix(8), Operation::Wrap, "k")
            .unwrap_err()
            .to_string();
        let ghost = acls
            .check(&unix(8), Operation::Wrap, "ghost")
            .unwrap_err()
            .to_string();
        assert!(real.contains("wrap on key \"k\" is not permitted"), "{real}");
        assert_eq!(ghost.replace("ghost", "k"), real);
        assert!(!acls.visible(&unix(8), "k"));
        assert!(acls.visible(&unix(7), "k"));
    }

    #[test]
    fn tls_names_and_tokens_match() {
        let acls = acls(&format!(
            "{BASE}allow = {{ unwrap = [\"uri:spiffe://prod/openbao\", \"token:ci\"], wrap = [\"*\"] }}\n"
        ))
        .unwrap();
        let tls = Caller::Tls {
            fingerprint: "ab".into(),
            names: vec!["uri:spiffe://prod/openbao".into()],
        };
        assert!(acls.check(&tls, Operation::Unwrap, "k").is_ok());
        assert!(
            acls.check(
                &Caller::Token {
                    identity: "ci".into()
                },
                Operation::Unwrap,
                "k"
            )
            .is_ok()
        );
        assert!(
            acls.check(&Caller::Anonymous { peer: "x".into() }, Operation::Wrap, "k")
                .is_err()
        );
    }

    #[test]
    fn bad_principal_names_the_field() {
        let err = acls(&format!("{BASE}allow = {{ wrap = [\"root\"] }}\n")).unwrap_err();
        assert_eq!(err.path, "keys.k.allow.wrap");
        let err = acls(&format!("{BASE}allow = {{ wrapp = [\"uid:1\"] }}\n")).unwrap_err();
        assert_eq!(err.path, "keys.k.allow.wrapp");
    }

    #[test]
    fn development_without_acls_is_open() {
        let acls = acls(&BASE.replace("hardened", "development")).unwrap();
        assert!(acls.check(&unix(8), Operation::Wrap, "k").is_ok());
        assert!(!acls.is_enforcing());
    }
}
