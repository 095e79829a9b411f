//! `[keys.NAME]`, parsed once into a typed [`KeySpec`]: the key ring's own
//! fields (policy, versions, retirement, who may do what) apart from each
//! member's backend settings, which only the member's backend kind reads.
//!
//! A key table takes one of three forms:
//!
//! ```toml
//! [keys.a]                       # one version, one member
//! backend = "hsm"
//! key_label = "a"
//!
//! [keys.b]                       # one version held by several backends (an HA key ring)
//! members = [{ backend = "hsm1", key_label = "b" }, { backend = "hsm2", key_label = "b" }]
//!
//! [keys.c]                       # versions given in the config
//! versions = [
//!   { version = 1, backend = "hsm", key_label = "c" },
//!   { version = 2, members = [{ backend = "hsm", key_label = "c-v2" }] },
//! ]
//! ```
//!
//! plus, at the key's top level only, `policy`, `primary_version`,
//! `min_decryption_version` and `allow`.

use std::collections::{BTreeMap, BTreeSet};

use sealbroker_core::WrapPolicy;

use super::ConfigError;

/// The fields of a key table that describe the logical key; every other
/// field of a single-backend key belongs to its backend.
const KEY_FIELDS: &[&str] = &[
    "backend",
    "members",
    "versions",
    "policy",
    "primary_version",
    "newest_version",
    "min_decryption_version",
    "allow",
];

/// How many versions above the newest configured one may be derived by name.
const MAX_DERIVED: u32 = 1024;

/// One logical key as configured.
#[derive(Clone, PartialEq)]
pub struct KeySpec {
    pub name: String,
    pub policy: WrapPolicy,
    /// The version new wraps use; the highest configured one when absent.
    /// Above every configured version, it is derived by name from the newest.
    pub primary_version: Option<u32>,
    /// Versions up to this one exist on the backend (some staged above the
    /// primary); those not configured are derived by name.
    pub newest_version: Option<u32>,
    /// Blobs under older versions are refused.
    pub min_decryption_version: u32,
    /// Who may do what; `None` when the table has no `allow` (open under
    /// Development, refused under Hardened).
    pub allow: Option<Grants>,
    /// Oldest first, each version number once.
    pub versions: Vec<VersionSpec>,
}

/// One configured version of a key.
#[derive(Clone, PartialEq)]
pub struct VersionSpec {
    pub version: u32,
    /// In unwrap order.
    pub members: Vec<MemberSpec>,
}

/// One backend key of a version.
#[derive(Clone, PartialEq)]
pub struct MemberSpec {
    /// The `[backends.NAME]` it is on.
    pub backend: String,
    /// Its backend's key settings, and nothing else.
    pub settings: toml::Table,
    /// Where it sits in the config, for its backend's errors.
    pub path: String,
}

/// An `allow` table: principals per operation (`any` is spread over all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub wrap: Vec<String>,
    pub unwrap: Vec<String>,
    pub rewrap: Vec<String>,
    pub admin: Vec<String>,
    /// Asymmetric keys: make signatures.
    pub sign: Vec<String>,
    /// Asymmetric keys: check signatures and read the public key.
    pub verify: Vec<String>,
    /// RSA encryption key pairs: encrypt to the public key.
    pub encrypt: Vec<String>,
    /// RSA encryption key pairs: decrypt with the private key.
    pub decrypt: Vec<String>,
}

/// Principal prefixes an ACL may name (see `broker::acl`).
pub const PRINCIPAL_KINDS: &[&str] = &["uid:", "gid:", "uri:", "dns:", "cn:", "sha256:", "token:"];

impl KeySpec {
    /// Parses `[keys.NAME]`; `backends` are the configured backend names.
    pub fn parse(name: &str, table: &toml::Table, backends: &BTreeSet<&str>) -> Result<KeySpec, ConfigError> {
        let path = format!("keys.{name}");
        let policy = match table.get("policy").map(|v| v.as_str()) {
            None | Some(Some("all")) => WrapPolicy::All,
            Some(Some("primary")) => WrapPolicy::Primary,
            _ => {
                return Err(ConfigError::new(
                    format!("{path}.policy"),
                    "must be \"all\" or \"primary\"",
                ));
            }
        };
        let primary_version = whole_number(table, "primary_version", &path)?;
        let newest_version = whole_number(table, "newest_version", &path)?;
        let min_decryption_version = whole_number(table, "min_decryption_version", &path)?.unwrap_or(1);
        let allow = table
            .get("allow")
            .map(|allow| Grants::parse(allow, &format!("{path}.allow")))
            .transpose()?;
        let versions = match table.get("versions") {
            Some(toml::Value::Array(entries)) => {
                if table.contains_key("backend") || table.contains_key("members") {
                    return Err(ConfigError::new(
                        format!("{path}.versions"),
                        "give either `versions` or `backend`/`members` at the key's top level, not both",
                    ));
                }
                if let Some(stray) = table.keys().find(|k| !KEY_FIELDS.contains(&k.as_str())) {
                    return Err(ConfigError::new(
                        format!("{path}.{stray}"),
                        "unknown field: with `versions`, backend settings go inside each version",
                    ));
                }
                let mut versions: BTreeMap<u32, VersionSpec> = BTreeMap::new();
                for (i, entry) in entries.iter().enumerate() {
                    let entry_path = format!("{path}.versions[{i}]");
                    let entry = entry
                        .as_table()
                        .ok_or_else(|| ConfigError::new(&entry_path, "must be a table"))?;
                    let version = match entry.get("version") {
                        Some(toml::Value::Integer(n)) if *n >= 1 && *n <= u32::MAX as i64 => *n as u32,
                        _ => {
                            return Err(ConfigError::new(
                                format!("{entry_path}.version"),
                                "must be a whole number from 1",
                            ));
                        }
                    };
                    let mut rest = entry.clone();
                    rest.remove("version");
                    let members = parse_members(&rest, &entry_path, backends)?;
                    if versions
                        .insert(version, VersionSpec { version, members })
                        .is_some()
                    {
                        return Err(ConfigError::new(
                            format!("{entry_path}.version"),
                            format!("version {version} appears twice"),
                        ));
                    }
                }
                if versions.is_empty() {
                    return Err(ConfigError::new(
                        format!("{path}.versions"),
                        "is empty: give at least one version",
                    ));
                }
                versions.into_values().collect()
            }
            Some(_) => {
                return Err(ConfigError::new(
                    format!("{path}.versions"),
                    "must be an array of tables",
                ));
            }
            None => {
                let mut rest = table.clone();
                for field in [
                    "policy",
                    "primary_version",
                    "newest_version",
                    "min_decryption_version",
                    "allow",
                ] {
                    rest.remove(field);
                }
                vec![VersionSpec {
                    version: 1,
                    members: parse_members(&rest, &path, backends)?,
                }]
            }
        };
        let spec = KeySpec {
            name: name.to_owned(),
            policy,
            primary_version,
            newest_version,
            min_decryption_version,
            allow,
            versions,
        };
        let primary = spec.primary();
        // A primary above every configured version is derived from the
        // newest one by its backend's naming convention (the registry
        // checks that the backend kind can); one below must be configured.
        let newest = spec.versions.last().map_or(1, |v| v.version);
        if let Some(asked) = spec.primary_version
            && asked < newest
            && spec.version(asked).is_none()
        {
            return Err(ConfigError::new(
                format!("{path}.primary_version"),
                format!("version {asked} is not configured"),
            ));
        }
        for (field, value) in [
            ("primary_version", spec.primary_version),
            ("newest_version", spec.newest_version),
        ] {
            if let Some(value) = value
                && value > newest.saturating_add(MAX_DERIVED)
            {
                return Err(ConfigError::new(
                    format!("{path}.{field}"),
                    format!(
                        "{value} is more than {MAX_DERIVED} above the newest configured version {newest}; \
                         declare the versions in between under `versions`"
                    ),
                ));
            }
        }
        if let Some(newest) = spec.newest_version
            && newest < primary
        {
            return Err(ConfigError::new(
                format!("{path}.newest_version"),
                format!("{newest} is below the primary version {primary}"),
            ));
        }
        if spec.min_decryption_version > primary {
            return Err(ConfigError::new(
                format!("{path}.min_decryption_version"),
                format!(
                    "{} is above the primary version {primary}",
                    spec.min_decryption_version
                ),
            ));
        }
        Ok(spec)
    }

    /// The configured primary version, else the highest.
    pub fn primary(&self) -> u32 {
        self.primary_version
            .unwrap_or_else(|| self.versions.last().map_or(1, |v| v.version))
    }

    pub fn version(&self, version: u32) -> Option<&VersionSpec> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// The members of the newest configured version, by backend name: what
    /// versions the broker creates itself lay their settings over.
    pub fn newest_members(&self) -> BTreeMap<&str, &MemberSpec> {
        self.versions
            .last()
            .map(|v| v.members.iter().map(|m| (m.backend.as_str(), m)).collect())
            .unwrap_or_default()
    }
}

fn whole_number(table: &toml::Table, field: &str, path: &str) -> Result<Option<u32>, ConfigError> {
    match table.get(field) {
        None => Ok(None),
        Some(toml::Value::Integer(n)) if *n >= 1 && *n <= u32::MAX as i64 => Ok(Some(*n as u32)),
        Some(_) => Err(ConfigError::new(
            format!("{path}.{field}"),
            "must be a whole number from 1",
        )),
    }
}

/// One version's members: `backend = ...` plus settings, or `members = [...]`.
fn parse_members(
    table: &toml::Table,
    path: &str,
    backends: &BTreeSet<&str>,
) -> Result<Vec<MemberSpec>, ConfigError> {
    match (table.get("backend"), table.get("members")) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            format!("{path}.members"),
            "give either `backend` or `members`, not both",
        )),
        (Some(_), None) => Ok(vec![parse_member(table, path, backends)?]),
        (None, Some(toml::Value::Array(entries))) if !entries.is_empty() => {
            if let Some(stray) = table.keys().find(|k| *k != "members") {
                return Err(ConfigError::new(
                    format!("{path}.{stray}"),
                    "unknown field: with `members`, backend settings go inside each member",
                ));
            }
            entries
                .iter()
                .enumerate()
                .map(|(i, entry)| {
                    let member_path = format!("{path}.members[{i}]");
                    let entry = entry
                        .as_table()
                        .ok_or_else(|| ConfigError::new(&member_path, "must be a table"))?;
                    parse_member(entry, &member_path, backends)
                })
                .collect()
        }
        (None, Some(_)) => Err(ConfigError::new(
            format!("{path}.members"),
            "must be a non-empty array of tables",
        )),
        (None, None) => Err(ConfigError::new(
            format!("{path}.backend"),
            "is missing: name a [backends.NAME] (or give `members` / `versions`)",
        )),
    }
}

fn parse_member(
    table: &toml::Table,
    path: &str,
    backends: &BTreeSet<&str>,
) -> Result<MemberSpec, ConfigError> {
    let backend = match table.get("backend") {
        Some(toml::Value::String(name)) => name.clone(),
        _ => {
            return Err(ConfigError::new(
                format!("{path}.backend"),
                "must name a [backends.NAME] table",
            ));
        }
    };
    if !backends.contains(backend.as_str()) {
        return Err(ConfigError::new(
            format!("{path}.backend"),
            format!("names backend {backend:?}, but there is no [backends.{backend}] table"),
        ));
    }
    let mut settings = table.clone();
    settings.remove("backend");
    Ok(MemberSpec {
        backend,
        settings,
        path: path.to_owned(),
    })
}

impl Grants {
    /// Parses an `allow` table at `path`.
    pub fn parse(value: &toml::Value, path: &str) -> Result<Grants, ConfigError> {
        let table = value
            .as_table()
            .ok_or_else(|| ConfigError::new(path, "must be a table, e.g. { wrap = [\"uid:1000\"] }"))?;
        let mut grants = Grants::default();
        for (field, list) in table {
            let field_path = format!("{path}.{field}");
            let principals = list
                .as_array()
                .ok_or_else(|| ConfigError::new(&field_path, "must be a list of principals"))?
                .iter()
                .map(|p| {
                    let text = p
                        .as_str()
                        .ok_or_else(|| ConfigError::new(&field_path, "principals are strings"))?;
                    if text == "*" || PRINCIPAL_KINDS.iter().any(|k| text.starts_with(k) && text.len() > k.len()) {
                        Ok(text.to_owned())
                    } else {
                        Err(ConfigError::new(
                            &field_path,
                            format!(
                                "{text:?} is not a principal; use uid:N, gid:N, uri:…, dns:…, cn:…, sha256:…, token:… or *"
                            ),
                        ))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            match field.as_str() {
                "wrap" => grants.wrap.extend(principals),
                "unwrap" => grants.unwrap.extend(principals),
                "rewrap" => grants.rewrap.extend(principals),
                "admin" => grants.admin.extend(principals),
                "sign" => grants.sign.extend(principals),
                "verify" => grants.verify.extend(principals),
                "encrypt" => grants.encrypt.extend(principals),
                "decrypt" => grants.decrypt.extend(principals),
                "any" => {
                    for list in [
                        &mut grants.wrap,
                        &mut grants.unwrap,
                        &mut grants.rewrap,
                        &mut grants.admin,
                        &mut grants.sign,
                        &mut grants.verify,
                        &mut grants.encrypt,
                        &mut grants.decrypt,
                    ] {
                        list.extend(principals.iter().cloned());
                    }
                }
                other => {
                    return Err(ConfigError::new(
                        field_path,
                        format!(
                            "unknown operation {other:?}; use wrap, unwrap, rewrap, admin, sign, verify, encrypt, decrypt or any"
                        ),
                    ));
                }
            }
        }
        Ok(grants)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<KeySpec, ConfigError> {
        let table: toml::Table = toml::from_str(text).unwrap();
        KeySpec::parse("k", &table, &["hsm", "hsm2"].into())
    }

    #[test]
    fn a_single_backend_key_keeps_only_backend_settings_for_its_member() {
        let key = spec(
            "backend = \"hsm\"\nkey_label = \"k\"\npolicy = \"primary\"\nmin_decryption_version = 1\n\
             allow = { wrap = [\"uid:7\"] }\n",
        )
        .unwrap();
        assert_eq!(key.policy, WrapPolicy::Primary);
        assert_eq!(key.allow.as_ref().unwrap().wrap, ["uid:7"]);
        let member = &key.versions[0].members[0];
        assert_eq!(member.backend, "hsm");
        assert_eq!(member.settings.keys().collect::<Vec<_>>(), ["key_label"]);
        assert_eq!(member.path, "keys.k");
    }

    #[test]
    fn versions_are_ordered_and_the_primary_defaults_to_the_highest() {
        let key = spec(
            "versions = [{ version = 3, backend = \"hsm\", key_label = \"c\" }, \
             { version = 1, members = [{ backend = \"hsm2\", key_label = \"a\" }] }]\n",
        )
        .unwrap();
        assert_eq!(key.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(key.primary(), 3);
        assert_eq!(key.versions[0].members[0].path, "keys.k.versions[1].members[0]");
        assert_eq!(
            key.newest_members()["hsm"].settings["key_label"].as_str(),
            Some("c")
        );
    }

    #[test]
    fn misplaced_fields_name_their_path() {
        let cases = [
            ("policy = \"some\"\nbackend = \"hsm\"", "keys.k.policy"),
            ("backend = \"nope\"", "keys.k.backend"),
            ("key_label = \"x\"", "keys.k.backend"),
            ("members = []", "keys.k.members"),
            (
                "members = [{ backend = \"hsm\" }]\nkey_label = \"x\"",
                "keys.k.key_label",
            ),
            (
                "versions = [{ version = 1, backend = \"hsm\" }]\nkey_label = \"x\"",
                "keys.k.key_label",
            ),
            ("versions = [{ backend = \"hsm\" }]", "keys.k.versions[0].version"),
            (
                "versions = [{ version = 1, backend = \"hsm\" }, { version = 1, backend = \"hsm\" }]",
                "keys.k.versions[1].version",
            ),
            // Above every configured version a primary is derived by name;
            // between configured versions it must be one of them.
            (
                "versions = [{ version = 1, backend = \"hsm\" }, { version = 3, backend = \"hsm\" }]\n\
                 primary_version = 2",
                "keys.k.primary_version",
            ),
            (
                "backend = \"hsm\"\nmin_decryption_version = 2",
                "keys.k.min_decryption_version",
            ),
            (
                "backend = \"hsm\"\nprimary_version = 3\nnewest_version = 2",
                "keys.k.newest_version",
            ),
            (
                "backend = \"hsm\"\nnewest_version = 5000",
                "keys.k.newest_version",
            ),
            (
                "backend = \"hsm\"\nprimary_version = 4000000000",
                "keys.k.primary_version",
            ),
            (
                "backend = \"hsm\"\nallow = { wrap = [\"root\"] }",
                "keys.k.allow.wrap",
            ),
            (
                "backend = \"hsm\"\nallow = { wrapp = [\"uid:1\"] }",
                "keys.k.allow.wrapp",
            ),
        ];
        for (text, path) in cases {
            let err = spec(text).err().unwrap_or_else(|| panic!("{text} was accepted"));
            assert_eq!(err.path, path, "{text}: {err}");
        }
    }
}
