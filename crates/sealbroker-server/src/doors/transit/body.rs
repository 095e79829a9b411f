//! Request bodies of the transit calls and Vault's `vault:v<N>:<base64>`
//! ciphertext format. Every refusal names the field it is about.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sealbroker_core::SecretBytes;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::TransitError;

/// `encrypt/<key>`: what to seal.
pub struct EncryptRequest {
    pub plaintext: SecretBytes,
    pub aad: Vec<u8>,
}

/// `decrypt/<key>`: what to open.
pub struct DecryptRequest {
    pub ciphertext: VaultCiphertext,
    pub aad: Vec<u8>,
}

/// A ciphertext as Vault writes it: `vault:v<N>:<standard base64 of our blob>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultCiphertext {
    pub version: u32,
    pub blob: Vec<u8>,
}

fn invalid(field: &str, reason: impl Into<String>) -> TransitError {
    TransitError::InvalidRequest {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

impl EncryptRequest {
    pub fn parse(body: &[u8]) -> Result<EncryptRequest, TransitError> {
        let mut fields = json_object(body)?;
        let plaintext = take_string(&mut fields, "plaintext")?;
        let aad = take_aad(&mut fields)?;
        refuse_other_fields(fields, "`plaintext` and `associated_data`")?;
        let plaintext = plaintext
            .ok_or_else(|| invalid("plaintext", "is missing: send the base64 of the bytes to seal"))?;
        // No decoder detail here: it would quote characters of what the
        // caller meant as a secret.
        let decoded = STANDARD.decode(plaintext.as_bytes()).map_err(|_| {
            invalid(
                "plaintext",
                "is not valid standard base64 (RFC 4648, with padding)",
            )
        })?;
        Ok(EncryptRequest {
            plaintext: SecretBytes::new(decoded),
            aad,
        })
    }
}

impl DecryptRequest {
    pub fn parse(body: &[u8]) -> Result<DecryptRequest, TransitError> {
        let mut fields = json_object(body)?;
        let ciphertext = take_string(&mut fields, "ciphertext")?;
        let aad = take_aad(&mut fields)?;
        refuse_other_fields(fields, "`ciphertext` and `associated_data`")?;
        let ciphertext = ciphertext.ok_or_else(|| {
            invalid(
                "ciphertext",
                "is missing: send the vault:v<N>:... string encrypt returned",
            )
        })?;
        Ok(DecryptRequest {
            ciphertext: VaultCiphertext::parse(&ciphertext)?,
            aad,
        })
    }
}

impl VaultCiphertext {
    pub fn parse(text: &str) -> Result<VaultCiphertext, TransitError> {
        const FORM: &str = "must have the form vault:v<N>:<base64>";
        let mut parts = text.split(':');
        let (Some(prefix), Some(version), Some(encoded), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("ciphertext", FORM));
        };
        if prefix != "vault" {
            return Err(invalid(
                "ciphertext",
                format!("{FORM}; it does not start with `vault:`"),
            ));
        }
        let version = version
            .strip_prefix('v')
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                invalid(
                    "ciphertext",
                    format!("{FORM}; the version is not v<N> with N >= 1"),
                )
            })?;
        let blob = STANDARD.decode(encoded).map_err(|e| {
            invalid(
                "ciphertext",
                format!("{FORM}; the part after the version is not valid standard base64: {e}"),
            )
        })?;
        if blob.is_empty() {
            return Err(invalid("ciphertext", format!("{FORM}; the base64 part is empty")));
        }
        Ok(VaultCiphertext { version, blob })
    }

    pub fn format(version: u32, blob: &[u8]) -> String {
        format!("vault:v{version}:{}", STANDARD.encode(blob))
    }
}

fn json_object(body: &[u8]) -> Result<Map<String, Value>, TransitError> {
    if body.trim_ascii().is_empty() {
        return Err(invalid("body", "is empty: send a JSON object"));
    }
    // serde_json's messages give a position, never the input.
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(invalid("body", "must be a JSON object")),
        Err(e) => Err(invalid("body", format!("is not valid JSON: {e}"))),
    }
}

/// Removes a string field; `null` counts as absent, as in Vault.
fn take_string(
    fields: &mut Map<String, Value>,
    name: &str,
) -> Result<Option<Zeroizing<String>>, TransitError> {
    match fields.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(Zeroizing::new(text))),
        Some(_) => Err(invalid(name, "must be a string")),
    }
}

fn take_aad(fields: &mut Map<String, Value>) -> Result<Vec<u8>, TransitError> {
    match take_string(fields, "associated_data")? {
        None => Ok(Vec::new()),
        Some(text) => STANDARD
            .decode(text.as_bytes())
            .map_err(|e| invalid("associated_data", format!("is not valid standard base64: {e}"))),
    }
}

/// Refuses what this door does not implement, rather than silently ignoring
/// a field that would change the meaning of the call.
fn refuse_other_fields(fields: Map<String, Value>, accepted: &str) -> Result<(), TransitError> {
    for (name, value) in fields {
        if value.is_null() {
            continue;
        }
        return Err(match name.as_str() {
            "context" => invalid(
                "context",
                "is not supported: sealbroker keys are not derived; use associated_data to bind context",
            ),
            "batch_input" => invalid("batch_input", "is not supported: send one item per request"),
            _ => invalid(&name, format!("is not supported; this call accepts {accepted}")),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(result: Result<impl Sized, TransitError>) -> (String, String) {
        match result {
            Err(TransitError::InvalidRequest { field, reason }) => (field, reason),
            Err(other) => panic!("expected InvalidRequest, got {other}"),
            Ok(_) => panic!("expected a refusal"),
        }
    }

    #[test]
    fn ciphertext_round_trips_through_vault_format() {
        let text = VaultCiphertext::format(7, b"\x00blob\xff");
        assert!(text.starts_with("vault:v7:"), "{text}");
        let parsed = VaultCiphertext::parse(&text).unwrap();
        assert_eq!(
            parsed,
            VaultCiphertext {
                version: 7,
                blob: b"\x00blob\xff".to_vec()
            }
        );
    }

    #[test]
    fn malformed_ciphertexts_are_refused_naming_the_field() {
        for bad in [
            "",
            "vault:v1",
            "vault:v1:QUJD:extra",
            "vault2:v1:QUJD",
            "vault:1:QUJD",
            "vault:v:QUJD",
            "vault:v0:QUJD",
            "vault:v+1:QUJD",
            "vault:v99999999999:QUJD",
            "vault:v1:not base64!",
            "vault:v1:",
        ] {
            let (field, reason) = refusal(VaultCiphertext::parse(bad));
            assert_eq!(field, "ciphertext", "{bad:?}");
            assert!(reason.contains("vault:v<N>:<base64>"), "{bad:?}: {reason}");
        }
    }

    #[test]
    fn encrypt_body_decodes_plaintext_and_aad() {
        let request =
            EncryptRequest::parse(br#"{"plaintext":"aGVsbG8=","associated_data":"Y3R4","context":null}"#)
                .unwrap();
        assert_eq!(request.plaintext.expose(), b"hello");
        assert_eq!(request.aad, b"ctx");
    }

    #[test]
    fn encrypt_body_refusals_name_the_field() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "body"),
            (b"{not json", "body"),
            (b"[1,2]", "body"),
            (b"{}", "plaintext"),
            (br#"{"plaintext":5}"#, "plaintext"),
            (br#"{"plaintext":"%%%"}"#, "plaintext"),
            (
                br#"{"plaintext":"aGVsbG8=","associated_data":"%"}"#,
                "associated_data",
            ),
            (br#"{"plaintext":"aGVsbG8=","context":"Y3R4"}"#, "context"),
            (
                br#"{"plaintext":null,"batch_input":[{"plaintext":"aGVsbG8="}]}"#,
                "batch_input",
            ),
            (br#"{"plaintext":"aGVsbG8=","batch_input":[]}"#, "batch_input"),
            (br#"{"plaintext":"aGVsbG8=","nonce":"AAAA"}"#, "nonce"),
        ];
        for (body, expected) in cases {
            let (field, reason) = refusal(EncryptRequest::parse(body));
            assert_eq!(&field, expected, "{}: {reason}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn bad_base64_plaintext_message_does_not_quote_the_input() {
        let (_, reason) = refusal(EncryptRequest::parse(br#"{"plaintext":"my secret"}"#));
        assert!(!reason.contains("secret") && !reason.contains("32"), "{reason}");
    }

    #[test]
    fn decrypt_body_parses_ciphertext() {
        let body = format!(r#"{{"ciphertext":"{}"}}"#, VaultCiphertext::format(2, b"blob"));
        let request = DecryptRequest::parse(body.as_bytes()).unwrap();
        assert_eq!(request.ciphertext.version, 2);
        assert_eq!(request.ciphertext.blob, b"blob");
        assert!(request.aad.is_empty());
        let (field, _) = refusal(DecryptRequest::parse(br#"{"associated_data":"Y3R4"}"#));
        assert_eq!(field, "ciphertext");
        let (field, _) = refusal(DecryptRequest::parse(br#"{"plaintext":"aGVsbG8="}"#));
        assert_eq!(field, "plaintext");
    }
}
