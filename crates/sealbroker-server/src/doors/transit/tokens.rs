//! The transit door's tokens: who a presented token is, and which keys it
//! may use.
//!
//! A token file is refused unless its token is estimated at 128 bits or more
//! ([`TransitTokenConfig::read_token`](crate::config::TransitTokenConfig::read_token)),
//! at start-up and on every reload, so guessing one is hopeless.
//!
//! Only SHA-256 digests of the configured tokens stay in memory. A presented
//! token is hashed and compared against every digest in constant time, so
//! neither the comparison nor the table's order tells a caller how close a
//! guess came.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use sealbroker_core::Error;
use subtle::{ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroizing;

use crate::broker::caller::{Call, Caller, Door};
use crate::config::{ConfigError, TransitConfig};

/// Vault's token header; `Authorization: Bearer` is accepted too.
pub const TOKEN_HEADER: &str = "x-vault-token";

/// What an authenticated token may do. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub identity: String,
    pub keys: BTreeSet<String>,
}

impl TokenGrant {
    /// A request under this grant, through the transit door.
    pub fn call(&self) -> Call {
        Call::new(Door::Transit, self.caller())
    }

    pub fn caller(&self) -> Caller {
        Caller::Token {
            identity: self.identity.clone(),
        }
    }

    /// Refuses `operation` on a key outside this token's scope. Unknown keys
    /// are refused the same way, so a token learns nothing about keys it may
    /// not use.
    pub fn permit(&self, operation: &'static str, key: &str) -> Result<(), Error> {
        if self.keys.contains(key) {
            Ok(())
        } else {
            Err(Error::PermissionDenied {
                operation,
                key: key.to_owned(),
                caller: self.caller().to_string(),
            })
        }
    }
}

/// A configured token: its digest (secret, so neither `Debug` nor `Clone`)
/// and its grant.
struct TokenEntry {
    digest: Zeroizing<[u8; 32]>,
    grant: Arc<TokenGrant>,
}

/// Every configured token. Deliberately not `Debug`.
#[derive(Default)]
pub struct TokenTable {
    entries: Vec<TokenEntry>,
}

/// The token table in force, replaceable by a reload: a token removed from
/// the config, or whose file changed, is refused from the next request on.
#[derive(Clone, Default)]
pub struct LiveTokens(Arc<RwLock<Arc<TokenTable>>>);

impl LiveTokens {
    pub fn new(table: TokenTable) -> Self {
        LiveTokens(Arc::new(RwLock::new(Arc::new(table))))
    }

    pub fn current(&self) -> Arc<TokenTable> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replace(&self, table: TokenTable) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }
}

fn sha256(bytes: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut digest = Zeroizing::new([0u8; 32]);
    digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    digest
}

impl TokenTable {
    /// Reads every `token_file` of `[[server.transit.tokens]]`, refusing a
    /// token weaker than the config's rule as the config check does.
    pub fn load(config: &TransitConfig) -> Result<TokenTable, ConfigError> {
        let mut table = TokenTable::default();
        for (index, entry) in config.tokens.iter().enumerate() {
            let token = entry.read_token(&format!("server.transit.tokens[{index}]"))?;
            table.insert(&token, &entry.identity, entry.keys.iter().cloned());
        }
        Ok(table)
    }

    /// Adds a token; the token bytes themselves are not kept. The strength
    /// rule is applied where tokens are read from files, not here.
    pub fn insert(&mut self, token: &[u8], identity: &str, keys: impl IntoIterator<Item = String>) {
        self.entries.push(TokenEntry {
            digest: sha256(token),
            grant: Arc::new(TokenGrant {
                identity: identity.to_owned(),
                keys: keys.into_iter().collect(),
            }),
        });
    }

    /// The grant of the token `presented`, if it is one of ours.
    pub fn authenticate(&self, presented: &[u8]) -> Option<Arc<TokenGrant>> {
        let digest = sha256(presented);
        // Visit every entry whatever matches, selecting the index without a
        // data-dependent branch.
        let mut found = u64::MAX;
        for (index, entry) in self.entries.iter().enumerate() {
            let matches = entry.digest.as_slice().ct_eq(digest.as_slice());
            found.conditional_assign(&(index as u64), matches);
        }
        usize::try_from(found)
            .ok()
            .and_then(|index| self.entries.get(index))
            .map(|entry| entry.grant.clone())
    }

    /// The grant of the token a request carries in `X-Vault-Token` or
    /// `Authorization: Bearer`, if any.
    pub fn authenticate_headers(&self, headers: &HeaderMap) -> Option<Arc<TokenGrant>> {
        let presented = match headers.get(TOKEN_HEADER) {
            Some(value) => value.as_bytes(),
            None => bearer_token(headers.get(AUTHORIZATION)?.as_bytes())?,
        };
        if presented.is_empty() {
            return None;
        }
        self.authenticate(presented)
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const TOKEN_A: &str = "s.token-a-Vn4Lq8Xr2Kp6Tw9Zc";
    const TOKEN_B: &str = "s.token-b-Hd3Mj7Qs1Fy5Bg0Rk";

    fn table() -> TokenTable {
        let mut table = TokenTable::default();
        table.insert(TOKEN_A.as_bytes(), "alice", ["k1".to_owned()]);
        table.insert(TOKEN_B.as_bytes(), "bob", ["k1".to_owned(), "k2".to_owned()]);
        table
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn each_token_maps_to_its_own_identity() {
        let table = table();
        assert_eq!(table.authenticate(TOKEN_A.as_bytes()).unwrap().identity, "alice");
        assert_eq!(table.authenticate(TOKEN_B.as_bytes()).unwrap().identity, "bob");
    }

    #[test]
    fn near_misses_and_empty_tokens_are_refused() {
        let table = table();
        let near = [
            TOKEN_A[..TOKEN_A.len() - 1].to_owned(),
            format!("{TOKEN_A} "),
            TOKEN_A.to_uppercase(),
            TOKEN_A.replace("token-a", "token-c"),
            String::new(),
        ];
        for guess in near {
            assert!(table.authenticate(guess.as_bytes()).is_none(), "{guess:?}");
        }
    }

    #[test]
    fn vault_header_and_bearer_are_both_accepted() {
        let table = table();
        let vault = table.authenticate_headers(&headers(&[("x-vault-token", TOKEN_A)]));
        assert_eq!(vault.unwrap().identity, "alice");
        let bearer = format!("bearer {TOKEN_B}");
        let bearer = table.authenticate_headers(&headers(&[("authorization", &bearer)]));
        assert_eq!(bearer.unwrap().identity, "bob");
        let basic = format!("Basic {TOKEN_A}");
        assert!(
            table
                .authenticate_headers(&headers(&[("authorization", &basic)]))
                .is_none()
        );
        assert!(table.authenticate_headers(&headers(&[])).is_none());
    }

    #[test]
    fn scope_refusal_names_operation_key_and_identity() {
        let grant = table().authenticate(TOKEN_A.as_bytes()).unwrap();
        assert!(grant.permit("encrypt", "k1").is_ok());
        let refused = grant.permit("decrypt", "k2").unwrap_err().to_string();
        assert!(refused.contains("decrypt"), "{refused}");
        assert!(refused.contains("\"k2\""), "{refused}");
        assert!(refused.contains("token:alice"), "{refused}");
    }

    fn transit_config(token_files: &[&std::path::Path]) -> TransitConfig {
        TransitConfig {
            listen: "127.0.0.1:8200".parse().unwrap(),
            mount_path: "transit".into(),
            plaintext: true,
            tls: None,
            tokens: token_files
                .iter()
                .enumerate()
                .map(|(index, file)| crate::config::TransitTokenConfig {
                    identity: format!("caller-{index}"),
                    token_file: file.to_path_buf(),
                    keys: vec!["k1".into()],
                })
                .collect(),
        }
    }

    #[test]
    fn loading_refuses_a_weak_token_as_a_reload_would_see_it() {
        let dir = tempfile::tempdir().unwrap();
        let (strong, weak) = (dir.path().join("strong"), dir.path().join("weak"));
        std::fs::write(&strong, format!("{TOKEN_A}\n")).unwrap();
        std::fs::write(&weak, "changeme\n").unwrap();
        let table = TokenTable::load(&transit_config(&[&strong])).unwrap();
        assert_eq!(
            table.authenticate(TOKEN_A.as_bytes()).unwrap().identity,
            "caller-0"
        );

        let Err(err) = TokenTable::load(&transit_config(&[&strong, &weak])) else {
            panic!("a weak token was loaded");
        };
        assert_eq!(err.path, "server.transit.tokens[1].token_file", "{err}");
        assert!(err.message.contains("too weak"), "{err}");
        assert!(!err.to_string().contains("changeme"), "{err}");
    }
}
