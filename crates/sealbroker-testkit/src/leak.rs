//! The secret-leak assertion: a log, an error message or a `Debug` output
//! must hold none of the secrets a test handed out (PINs, tokens, client
//! secrets, plaintexts).
//!
//! A failure names the secret that leaked, where it leaked and how often,
//! and shows the text around the first leak with every listed secret masked:
//! the test output itself must not become the leak.

use std::fmt::Write as _;

/// How much text either side of a leak the failure shows.
const CONTEXT: usize = 120;

/// Asserts that no secret in `secrets`, given as `(name, value)`, occurs in
/// `haystack`; `what` says what the haystack is ("the daemon log", "the
/// error's Debug output"). Names must describe a secret, not quote it.
///
/// Panics naming each secret that leaked, with its line and byte offset,
/// never printing a secret. An empty secret is a mistake in the test (it
/// is found in every text), and panics too.
#[track_caller]
pub fn assert_no_secret(haystack: &str, secrets: &[(&str, &str)], what: &str) {
    for (name, secret) in secrets {
        assert!(
            !secret.is_empty(),
            "assert_no_secret: {name} is empty, and an empty secret is found in any text"
        );
    }
    let mut leaks = String::new();
    for (name, secret) in secrets {
        let Some(at) = haystack.find(secret) else {
            continue;
        };
        let line = haystack[..at].matches('\n').count() + 1;
        let times = haystack.matches(secret).count();
        let _ = write!(
            leaks,
            "\n  {name}: {times} time(s), first at line {line} (byte {at})"
        );
    }
    if leaks.is_empty() {
        return;
    }
    panic!(
        "a secret leaked into {what}:{leaks}\naround the first leak, with the secrets masked:\n{}",
        masked_context(haystack, secrets)
    );
}

/// The text around the earliest leak, each secret replaced by `<NAME>`.
fn masked_context(haystack: &str, secrets: &[(&str, &str)]) -> String {
    // Longest first, so a secret containing another is masked whole.
    let mut by_length: Vec<&(&str, &str)> = secrets.iter().collect();
    by_length.sort_by_key(|(_, secret)| std::cmp::Reverse(secret.len()));
    let mut masked = String::with_capacity(haystack.len());
    let mut first_mask = None;
    let mut rest = haystack;
    while let Some(c) = rest.chars().next() {
        match by_length.iter().find(|(_, secret)| rest.starts_with(secret)) {
            Some((name, secret)) => {
                first_mask.get_or_insert(masked.len());
                masked.push_str(&format!("<{name}>"));
                rest = &rest[secret.len()..];
            }
            None => {
                masked.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    let at = first_mask.unwrap_or(0);
    let mut start = at.saturating_sub(CONTEXT);
    while !masked.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (at + CONTEXT).min(masked.len());
    while !masked.is_char_boundary(end) {
        end += 1;
    }
    let ellipsis = |cut: bool| if cut { "…" } else { "" };
    format!(
        "{}{}{}",
        ellipsis(start > 0),
        &masked[start..end],
        ellipsis(end < masked.len())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(haystack: &str, secrets: &[(&str, &str)]) -> String {
        let haystack = haystack.to_owned();
        let secrets: Vec<(String, String)> = secrets
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect();
        let panic = std::panic::catch_unwind(move || {
            let secrets: Vec<(&str, &str)> = secrets.iter().map(|(n, s)| (n.as_str(), s.as_str())).collect();
            assert_no_secret(&haystack, &secrets, "the test log");
        })
        .expect_err("the assertion passed");
        panic.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    #[test]
    fn text_without_the_secrets_passes() {
        assert_no_secret(
            "unseal refused: permission denied",
            &[("the PIN", "4711")],
            "an error",
        );
    }

    #[test]
    fn a_leak_is_named_and_located_without_printing_the_secret() {
        let message = failure(
            "start\npin is 4711-secret, again 4711-secret\n",
            &[("the HSM PIN", "4711-secret"), ("the root token", "s.root")],
        );
        assert!(message.contains("into the test log"), "{message}");
        assert!(
            message.contains("the HSM PIN: 2 time(s), first at line 2 (byte 13)"),
            "{message}"
        );
        assert!(!message.contains("the root token"), "{message}");
        assert!(
            message.contains("pin is <the HSM PIN>, again <the HSM PIN>"),
            "{message}"
        );
        assert!(!message.contains("4711"), "{message}");
    }

    #[test]
    fn a_secret_inside_another_is_masked_with_it() {
        let message = failure(
            "got client-DO-NOT-LEAK here",
            &[
                ("a DO-NOT-LEAK marker", "DO-NOT-LEAK"),
                ("the client secret", "client-DO-NOT-LEAK"),
            ],
        );
        assert!(message.contains("a DO-NOT-LEAK marker: 1 time(s)"), "{message}");
        assert!(message.contains("the client secret: 1 time(s)"), "{message}");
        assert!(message.contains("got <the client secret> here"), "{message}");
    }

    #[test]
    fn the_context_is_cut_on_character_boundaries() {
        let haystack = format!("{}TOKEN{}", "é".repeat(200), "ü".repeat(200));
        let message = failure(&haystack, &[("the token", "TOKEN")]);
        assert!(message.contains("<the token>"), "{message}");
        assert!(!message.contains("TOKEN"), "{message}");
    }

    #[test]
    fn an_empty_secret_is_a_mistake() {
        let message = failure("anything", &[("the PIN", "")]);
        assert!(message.contains("the PIN is empty"), "{message}");
    }
}
