//! The transit door's tokens: who a presented token is, and which keys it
//! may use.
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
    /// Reads every `token_file` of `[[server.transit.tokens]]`.
    pub fn load(config: &TransitConfig) -> Result<TokenTable, ConfigError> {
        let mut table = TokenTable::default();
        for (index, entry) in config.tokens.iter().enumerate() {
            let token = entry.read_token(&format!("server.transit.tokens[{index}]"))?;
            table.insert(&token, &entry.identity, entry.keys.iter().cloned());
        }
        Ok(table)
    }

    /// Adds a token; the token bytes themselves are not kept.
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

    fn table() -> TokenTable {
        let mut table = TokenTable::default();
        table.insert(b"token-a", "alice", ["k1".to_owned()]);
        table.insert(b"token-b", "bob", ["k1".to_owned(), "k2".to_owned()]);
        table
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn each_token_maps_to_its_own_identity() {
        let table = table();
        assert_eq!(table.authenticate(b"token-a").unwrap().identity, "alice");
        assert_eq!(table.authenticate(b"token-b").unwrap().identity, "bob");
    }

    #[test]
    fn near_misses_and_empty_tokens_are_refused() {
        let table = table();
        for guess in [&b"token-"[..], b"token-a ", b"TOKEN-A", b"token-c", b""] {
            assert!(table.authenticate(guess).is_none(), "{guess:?}");
        }
    }

    #[test]
    fn vault_header_and_bearer_are_both_accepted() {
        let table = table();
        let vault = table.authenticate_headers(&headers(&[("x-vault-token", "token-a")]));
        assert_eq!(vault.unwrap().identity, "alice");
        let bearer = table.authenticate_headers(&headers(&[("authorization", "bearer token-b")]));
        assert_eq!(bearer.unwrap().identity, "bob");
        assert!(
            table
                .authenticate_headers(&headers(&[("authorization", "Basic token-a")]))
                .is_none()
        );
        assert!(table.authenticate_headers(&headers(&[])).is_none());
    }

    #[test]
    fn scope_refusal_names_operation_key_and_identity() {
        let grant = table().authenticate(b"token-a").unwrap();
        assert!(grant.permit("encrypt", "k1").is_ok());
        let refused = grant.permit("decrypt", "k2").unwrap_err().to_string();
        assert!(refused.contains("decrypt"), "{refused}");
        assert!(refused.contains("\"k2\""), "{refused}");
        assert!(refused.contains("token:alice"), "{refused}");
    }
}
