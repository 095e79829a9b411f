//! Drives the real transit router (built from `[server.transit]` over a
//! Development broker on software keys) with arbitrary requests: method,
//! path, headers and body, as HTTP/1.1 text (see `HttpInput`).
//!
//! It may not panic, and every answer:
//! - is below 500 (the backends are local and healthy: a 5xx is a bug);
//! - is a JSON object (but to HEAD); on 4xx an `errors` list of non-empty strings and
//!   nothing else of substance, on 2xx no `errors`;
//! - succeeds without a configured token only for `sys/health`, and with OpenBao's
//!   token only on key `unseal`;
//! - never holds a configured token the request carried only as a credential (or not at all).
//!
//! A successful encrypt is decrypted again with the same token and AAD and
//! must give back the plaintext.

#![no_main]

use axum::Router;
use axum::body::Bytes;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use sealbroker_server::doors::transit::throttle::ThrottleLimits;
use sealbroker_server_fuzz::{HttpInput, MOUNT_PREFIX, OPENBAO_TOKEN, OPS_TOKEN, fixture, percent_decode};
use serde_json::{Map, Value, json};
use tower::ServiceExt;

struct Reply {
    status: StatusCode,
    json_content: bool,
    raw: Bytes,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

async fn call(app: &Router, input: &HttpInput) -> Reply {
    let response = app
        .clone()
        .oneshot(input.to_request())
        .await
        .expect("a router is infallible");
    let status = response.status();
    let json_content = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/json");
    let raw = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("a response body");
    Reply {
        status,
        json_content,
        raw,
    }
}

/// The checks every answer passes; returns the JSON object (absent for HEAD).
fn check_reply(input: &HttpInput, reply: &Reply) -> Option<Value> {
    let status = reply.status;
    assert!(
        !status.is_server_error(),
        "{} {} answered {status}: {}",
        input.method,
        input.uri,
        reply.text()
    );
    // Outside the credential headers' values, a token is the caller's own text, which
    // refusals may quote (the method, path, or a field name in the body).
    let carried = |token: &str| {
        input.method.as_str().contains(token)
            || input.uri.to_string().contains(token)
            || input.headers.keys().any(|name| name.as_str().contains(token))
            || input.body.windows(token.len()).any(|w| w == token.as_bytes())
    };
    for token in [OPENBAO_TOKEN, OPS_TOKEN] {
        assert!(
            carried(token) || !reply.text().contains(token),
            "a configured token leaked into a {status} answer"
        );
    }
    if input.method == Method::HEAD {
        return None;
    }
    assert!(reply.json_content, "{status} answer is not application/json");
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(&reply.raw) else {
        panic!("{status} answer is not a JSON object: {}", reply.text());
    };
    let object: Map<String, Value> = object;
    if status.is_client_error() {
        let errors = object.get("errors").and_then(Value::as_array);
        let errors =
            errors.unwrap_or_else(|| panic!("{status} answer has no `errors` list: {}", reply.text()));
        assert!(!errors.is_empty(), "{status} answer has an empty `errors` list");
        for error in errors {
            assert!(
                error.as_str().is_some_and(|e| !e.is_empty()),
                "{status} answer has a non-string or empty error: {error}"
            );
        }
        assert!(
            !object.contains_key("data") && !object.contains_key("auth"),
            "{status} answer carries data: {}",
            reply.text()
        );
    } else {
        assert!(!object.contains_key("errors"), "{status} answer has `errors`");
    }
    Some(Value::Object(object))
}

/// The path after `/v1/<mount>/<operation>/`, percent-decoded as the router's `Path` does.
fn key_in_path(path: &str, operation: &str) -> Option<Vec<u8>> {
    let rest = path
        .strip_prefix(MOUNT_PREFIX)?
        .strip_prefix(operation)?
        .strip_prefix('/')?;
    Some(percent_decode(rest))
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = HttpInput::parse(data) else {
        return;
    };
    let fixture = fixture();
    // Each input starts in a fresh throttle window (the throttle has unit tests).
    fixture.transit_clock.advance(ThrottleLimits::default().window);
    let reply = fixture.runtime.block_on(call(&fixture.transit, &input));
    let object = check_reply(&input, &reply);
    if !reply.status.is_success() {
        return;
    }

    // Who may succeed where.
    let presents = |token: &str| {
        input
            .headers
            .values()
            .any(|v| v.as_bytes().windows(token.len()).any(|w| w == token.as_bytes()))
    };
    let path = input.uri.path();
    if !presents(OPENBAO_TOKEN) && !presents(OPS_TOKEN) {
        assert_eq!(path, "/v1/sys/health", "succeeded without a configured token");
    }
    let keyed = ["encrypt", "decrypt", "keys"]
        .into_iter()
        .find_map(|operation| key_in_path(path, operation));
    if let Some(key) = &keyed
        && !presents(OPS_TOKEN)
    {
        assert_eq!(key, b"unseal", "OpenBao's token used a key outside its scope");
    }

    // A successful encrypt decrypts again to the same plaintext.
    let Some(object) = object else { return };
    let Some(key) = key_in_path(path, "encrypt") else {
        if key_in_path(path, "decrypt").is_some() {
            let plaintext = object["data"]["plaintext"]
                .as_str()
                .expect("decrypt answers a plaintext");
            STANDARD.decode(plaintext).expect("the plaintext is base64");
        }
        return;
    };
    let request = serde_json::from_slice::<Value>(&input.body).expect("encrypt succeeded on a JSON body");
    let plaintext = request["plaintext"]
        .as_str()
        .expect("encrypt succeeded without a plaintext");
    let ciphertext = object["data"]["ciphertext"]
        .as_str()
        .expect("encrypt answers a ciphertext");
    let version = object["data"]["key_version"]
        .as_u64()
        .expect("encrypt answers a key version");
    assert!(
        ciphertext.starts_with(&format!("vault:v{version}:")),
        "ciphertext {ciphertext:?} does not carry version {version}"
    );
    let body = json!({ "ciphertext": ciphertext, "associated_data": request["associated_data"] });
    let key = String::from_utf8_lossy(&key).into_owned();
    let raw_key = &path[path.rfind('/').expect("a key path") + 1..];
    let decrypt = HttpInput {
        method: Method::PUT,
        uri: format!("{MOUNT_PREFIX}decrypt/{raw_key}")
            .parse()
            .expect("the encrypt path's last segment makes a valid decrypt path"),
        headers: {
            let mut headers = input.headers.clone();
            headers.remove(CONTENT_LENGTH);
            headers
        },
        body: body.to_string().into_bytes(),
    };
    let opened = fixture.runtime.block_on(call(&fixture.transit, &decrypt));
    let object = check_reply(&decrypt, &opened).expect("a PUT answer");
    assert_eq!(
        opened.status,
        StatusCode::OK,
        "decrypting what key {key:?} encrypted failed: {}",
        opened.text()
    );
    let opened = STANDARD
        .decode(
            object["data"]["plaintext"]
                .as_str()
                .expect("decrypt answers a plaintext"),
        )
        .expect("the plaintext is base64");
    assert_eq!(
        opened,
        STANDARD.decode(plaintext).expect("encrypt accepted the base64"),
        "round trip changed the plaintext"
    );
});
