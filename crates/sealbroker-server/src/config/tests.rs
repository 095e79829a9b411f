//! Config parsing: defaults, field paths, profile refusals.
use super::*;

const MINIMAL: &str = r#"
    profile = "development"
    [server]
    unix_socket = "/tmp/x.sock"
    [backends.soft]
    type = "software"
    [keys.k]
    backend = "soft"
    key_file = "/tmp/k"
"#;

fn error_of(text: &str) -> ConfigError {
    Config::parse(text).expect_err("config should be rejected")
}

#[test]
fn absent_tables_get_the_documented_defaults() {
    let config = Config::parse("[backends.b]\ntype = \"x\"\n[keys.k]\nbackend = \"b\"\n").unwrap();
    assert_eq!(config.profile, Profile::Hardened);
    assert_eq!(config.unix_socket_mode(), 0o600);
    assert_eq!(config.server.shutdown_grace_secs, 10);
    assert_eq!(config.limits.request_timeout_secs, 30);
    assert!(config.require_listener().is_err());
}

#[test]
fn a_kms_v2_socket_is_a_listener_and_metrics_alone_are_not() {
    let base = "profile = \"development\"\n[backends.b]\ntype = \"x\"\n[keys.k]\nbackend = \"b\"\n";
    let kms = format!("{base}[server.kms_v2]\nsocket = \"/run/kms.sock\"\nkey_name = \"k\"\n");
    Config::parse(&kms).unwrap().require_listener().unwrap();
    let metrics = format!("{base}[server.metrics]\nlisten = \"127.0.0.1:9464\"\n");
    let err = Config::parse(&metrics).unwrap().require_listener().unwrap_err();
    assert_eq!(err.path, "server");
    assert!(err.message.contains("no listener"), "{err}");
}

#[test]
fn hardened_serves_metrics_on_loopback_only() {
    let base = "profile = \"hardened\"\n[server]\nunix_socket = \"/run/sb.sock\"\n\
                [backends.b]\ntype = \"x\"\n[keys.k]\nbackend = \"b\"\n";
    for listen in ["0.0.0.0:9464", "10.0.0.7:9464", "[::]:9464"] {
        let text = base.replace(
            "[backends.b]",
            &format!("[server.metrics]\nlisten = \"{listen}\"\n[backends.b]"),
        );
        let err = Config::parse(&text).unwrap_err();
        assert_eq!(err.path, "server.metrics.listen", "{listen}: {err}");
        assert!(err.message.contains("only on loopback"), "{err}");
    }
    for listen in ["127.0.0.1:9464", "[::1]:9464"] {
        let text = base.replace(
            "[backends.b]",
            &format!("[server.metrics]\nlisten = \"{listen}\"\n[backends.b]"),
        );
        Config::parse(&text).unwrap();
    }
    let development = base.replace("hardened", "development").replace(
        "[backends.b]",
        "[server.metrics]\nlisten = \"0.0.0.0:9464\"\n[backends.b]",
    );
    Config::parse(&development).unwrap();
}

#[test]
fn debug_never_prints_backend_settings() {
    let text = MINIMAL.replace("type = \"software\"", "type = \"software\"\npin = \"s3cr3t-pin\"");
    let config: Config = toml::from_str(&text).unwrap();
    let printed = format!("{config:?}");
    assert!(
        !printed.contains("s3cr3t-pin") && printed.contains("soft"),
        "{printed}"
    );
}

#[test]
fn minimal_development_config_parses() {
    let config = Config::parse(MINIMAL).unwrap();
    assert_eq!(config.profile, Profile::Development);
    assert_eq!(config.limits.max_plaintext_bytes, 65536);
}

#[test]
fn unknown_field_names_its_path() {
    let err = error_of(&MINIMAL.replace("[server]", "[server]\nunix_sockett = 1"));
    assert_eq!(err.path, "server.unix_sockett", "{err}");
    assert!(err.message.contains("unix_sockett"), "{err}");
}

#[test]
fn wrong_type_names_its_path() {
    let err = error_of(&format!("{MINIMAL}\n[limits]\nmax_plaintext_bytes = \"big\""));
    assert_eq!(err.path, "limits.max_plaintext_bytes", "{err}");
}

#[test]
fn bad_profile_names_the_choices() {
    let err = error_of(&MINIMAL.replace("\"development\"", "\"prod\""));
    assert_eq!(err.path, "profile");
    assert!(err.message.contains("hardened"), "{err}");
}

#[test]
fn key_naming_missing_backend_is_rejected() {
    let err = error_of(&MINIMAL.replace("backend = \"soft\"", "backend = \"hsm\""));
    assert_eq!(err.path, "keys.k.backend");
    assert!(err.message.contains("[backends.hsm]"), "{err}");
}

#[test]
fn hardened_refuses_plaintext_tcp_and_says_why() {
    let text = MINIMAL.replace("\"development\"", "\"hardened\"")
        + "\n[server.tcp]\nlisten = \"127.0.0.1:1\"\nplaintext = true\n";
    let err = error_of(&text);
    assert_eq!(err.path, "server.tcp.plaintext");
    assert!(
        err.message.contains("hardened profile refuses plaintext TCP"),
        "{err}"
    );
}

#[test]
fn tls_without_client_ca_is_refused() {
    let text = MINIMAL.to_owned()
        + "\n[server.tcp]\nlisten = \"127.0.0.1:1\"\n[server.tcp.tls]\ncert_file = \"c\"\nkey_file = \"k\"\n";
    let err = error_of(&text);
    assert_eq!(err.path, "server.tcp.tls.client_ca_file");
    assert!(err.message.contains("mutual TLS"), "{err}");
}

#[test]
fn syntax_error_reports_the_line() {
    let err = error_of("profile = ");
    assert!(err.message.contains("line 1"), "{err}");
}

/// A token that passes the strength rule: 28 characters of all four classes.
const TOKEN_ONE: &str = "s.token-one-7Qm2xV9pLr4Kd8Wn";

/// `[server.transit]` tables over MINIMAL, with token files in a temporary directory.
struct TransitFixture {
    dir: tempfile::TempDir,
}

impl TransitFixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN_ONE}\n")).unwrap();
        std::fs::write(dir.path().join("token2"), "s.token-two-3Hc6Ty1Bz5Nf0Gs").unwrap();
        TransitFixture { dir }
    }

    fn token(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// `profile`, then a plaintext transit listener with `extra` lines,
    /// then `tokens` (TOML array-of-tables text).
    fn config(&self, profile: &str, transit: &str, tokens: &str) -> String {
        MINIMAL.replace("\"development\"", &format!("\"{profile}\""))
            + &format!("\n[server.transit]\nlisten = \"127.0.0.1:8200\"\n{transit}\n{tokens}")
    }

    fn one_token(&self) -> String {
        format!(
            "[[server.transit.tokens]]\nidentity = \"openbao\"\ntoken_file = \"{}\"\nkeys = [\"k\"]\n",
            self.token("token")
        )
    }
}

#[test]
fn transit_config_parses_with_defaults() {
    let fixture = TransitFixture::new();
    let config =
        Config::parse(&fixture.config("development", "plaintext = true", &fixture.one_token())).unwrap();
    let transit = config.server.transit.as_ref().unwrap();
    assert_eq!(transit.mount(), "transit");
    assert_eq!(transit.tokens[0].identity, "openbao");
    assert_eq!(transit.tokens[0].keys, ["k"]);
    let token = transit.tokens[0].read_token("t").unwrap();
    assert_eq!(
        &token[..],
        TOKEN_ONE.as_bytes(),
        "the trailing newline is dropped"
    );
}

#[test]
fn transit_mount_path_slashes_are_trimmed_and_bad_paths_refused() {
    let fixture = TransitFixture::new();
    let parse = |mount: &str| {
        Config::parse(&fixture.config(
            "development",
            &format!("plaintext = true\nmount_path = \"{mount}\""),
            &fixture.one_token(),
        ))
    };
    let config = parse("/kms/transit/").unwrap();
    assert_eq!(config.server.transit.unwrap().mount(), "kms/transit");
    for bad in ["", "/", "a b", "../x", "a//b", "{key}", "auth/transit", "sys"] {
        let err = parse(bad).expect_err(bad);
        assert_eq!(err.path, "server.transit.mount_path", "{bad:?}: {err}");
    }
}

#[test]
fn hardened_refuses_plaintext_transit_and_says_why() {
    let fixture = TransitFixture::new();
    let err = error_of(&fixture.config("hardened", "plaintext = true", &fixture.one_token()));
    assert_eq!(err.path, "server.transit.plaintext", "{err}");
    assert!(
        err.message.contains("hardened profile refuses plaintext HTTP"),
        "{err}"
    );
    assert!(err.message.contains("tokens and unwrapped secrets"), "{err}");
}

#[test]
fn transit_tls_without_client_ca_is_refused_when_hardened_only() {
    let fixture = TransitFixture::new();
    let tls = "[server.transit.tls]\ncert_file = \"c\"\nkey_file = \"k\"";
    let err = error_of(&fixture.config("hardened", tls, &fixture.one_token()));
    assert_eq!(err.path, "server.transit.tls.client_ca_file", "{err}");
    assert!(err.message.contains("mutual TLS"), "{err}");
    // Development may rely on tokens alone.
    Config::parse(&fixture.config("development", tls, &fixture.one_token())).unwrap();
    let with_ca = format!("{tls}\nclient_ca_file = \"ca\"");
    Config::parse(&fixture.config("hardened", &with_ca, &fixture.one_token())).unwrap();
}

#[test]
fn transit_needs_tls_or_plaintext_and_not_both() {
    let fixture = TransitFixture::new();
    let err = error_of(&fixture.config("development", "", &fixture.one_token()));
    assert_eq!(err.path, "server.transit.tls", "{err}");
    let both = "plaintext = true\n[server.transit.tls]\ncert_file = \"c\"\nkey_file = \"k\"";
    let err = error_of(&fixture.config("development", both, &fixture.one_token()));
    assert_eq!(err.path, "server.transit.plaintext", "{err}");
}

#[test]
fn transit_needs_at_least_one_token() {
    let fixture = TransitFixture::new();
    let err = error_of(&fixture.config("development", "plaintext = true", ""));
    assert_eq!(err.path, "server.transit.tokens", "{err}");
    assert!(err.message.contains("[[server.transit.tokens]]"), "{err}");
}

#[test]
fn transit_token_entries_are_checked_field_by_field() {
    let fixture = TransitFixture::new();
    let empty = fixture.dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let spaced = fixture.dir.path().join("spaced");
    std::fs::write(&spaced, "two words\n").unwrap();
    let entry = |identity: &str, file: &str, keys: &str| {
        format!(
            "[[server.transit.tokens]]\nidentity = \"{identity}\"\ntoken_file = \"{file}\"\nkeys = {keys}\n"
        )
    };
    let token = fixture.token("token");
    let token2 = fixture.token("token2");
    let cases = [
        (
            entry("a", &token, "[\"nope\"]"),
            "server.transit.tokens[0].keys",
            "[keys.nope]",
        ),
        (
            entry("a", &token, "[]"),
            "server.transit.tokens[0].keys",
            "is empty",
        ),
        (
            entry("", &token, "[\"k\"]"),
            "server.transit.tokens[0].identity",
            "non-empty",
        ),
        (
            entry("a b", &token, "[\"k\"]"),
            "server.transit.tokens[0].identity",
            "letters",
        ),
        (
            entry("a", "/nonexistent/token", "[\"k\"]"),
            "server.transit.tokens[0].token_file",
            "cannot read",
        ),
        (
            entry("a", &empty.display().to_string(), "[\"k\"]"),
            "server.transit.tokens[0].token_file",
            "is empty",
        ),
        (
            entry("a", &spaced.display().to_string(), "[\"k\"]"),
            "server.transit.tokens[0].token_file",
            "printable ASCII",
        ),
        (
            entry("a", &token, "[\"k\"]") + &entry("a", &token2, "[\"k\"]"),
            "server.transit.tokens[1].identity",
            "earlier token",
        ),
        (
            entry("a", &token, "[\"k\"]") + &entry("b", &token, "[\"k\"]"),
            "server.transit.tokens[1].token_file",
            "same token",
        ),
        (
            entry("a", &token, "[\"k\"]").replace("keys =", "key =") + "keys = [\"k\"]\n",
            "server.transit.tokens[0].key",
            "unknown field",
        ),
    ];
    for (tokens, path, message) in cases {
        let err = error_of(&fixture.config("development", "plaintext = true", &tokens));
        assert_eq!(err.path, path, "{tokens}: {err}");
        assert!(err.message.contains(message), "{tokens}: {err}");
    }
}

#[test]
fn weak_transit_tokens_are_refused_naming_the_field_and_why() {
    let fixture = TransitFixture::new();
    for (index, weak) in [
        "changeme",
        "0123456789abcdef",
        "s.alice-token-9f2c",
        "hvs.fuzz-ops-b27e0d54",
    ]
    .into_iter()
    .enumerate()
    {
        let file = fixture.dir.path().join(format!("weak{index}"));
        std::fs::write(&file, format!("{weak}\n")).unwrap();
        // The weak token is the second entry, so the path names its index.
        let tokens = fixture.one_token()
            + &format!(
                "[[server.transit.tokens]]\nidentity = \"weak\"\ntoken_file = \"{}\"\nkeys = [\"k\"]\n",
                file.display()
            );
        let err = error_of(&fixture.config("development", "plaintext = true", &tokens));
        assert_eq!(err.path, "server.transit.tokens[1].token_file", "{weak}: {err}");
        assert!(err.message.contains("too weak"), "{weak}: {err}");
        assert!(err.message.contains("at least 128 are required"), "{weak}: {err}");
        assert!(err.message.contains(&file.display().to_string()), "{weak}: {err}");
        assert!(
            !err.to_string().contains(weak),
            "the error quotes the token: {err}"
        );
    }
    let err = error_of(&fixture.config(
        "development",
        "plaintext = true",
        &fixture.one_token().replace(
            &fixture.token("token"),
            &fixture.dir.path().join("weak0").display().to_string(),
        ),
    ));
    assert!(
        err.message
            .contains("8 characters from an alphabet of 26 give about 37 bits"),
        "{err}"
    );
}

#[test]
fn token_strength_is_length_times_log2_of_the_classes_used() {
    let bits = |token: &str| TokenStrength::of(token.as_bytes()).bits();
    let alphabet = |token: &str| TokenStrength::of(token.as_bytes()).alphabet;
    assert_eq!(alphabet("changeme"), 26);
    assert_eq!(alphabet("CHANGEME42"), 36);
    assert_eq!(alphabet("s.AbC1"), 94);
    assert_eq!(alphabet("0123456789"), 10, "digits alone are not hex");
    assert_eq!(alphabet("deadbeef01"), 16);
    assert_eq!(alphabet("DEADBEEF01"), 16);
    assert_eq!(
        alphabet("DeadBeef01"),
        62,
        "mixed-case hex is not what a hex generator gives"
    );
    assert_eq!(bits(""), 0.0);

    // What the rule lets through: OpenBao-style and generator output.
    for strong in [
        "s.Xk3pQ9vLm2Rt7Yw4Zb8Nc1Df",       // s. + 24 base62
        "hvs.CAESIJx7mQ2pLr9vKd4Wn8Tb3Yh6", // hvs. + base62
        "0123456789abcdef0123456789abcdef", // 32 hex = exactly 128 bits
        "3q2+7w3q2+7w3q2+7w3q2+7w3q2=",     // base64 of 20 bytes
        "bench-transit-token-5f2c9e",       // the bench's fixture
    ] {
        assert!(
            bits(strong) >= MIN_TRANSIT_TOKEN_BITS,
            "{strong}: {}",
            bits(strong)
        );
    }
    assert_eq!(bits("0123456789abcdef0123456789abcdef"), 128.0);
    for weak in [
        "changeme",
        "0123456789abcdef",                       // 16 hex: 64 bits
        "0123456789abcdef0123456789abcde",        // 31 hex: 124 bits
        "12345678901234567890123456789012345678", // 38 digits: 126 bits
        "s.alice-token-9f2c",
    ] {
        assert!(bits(weak) < MIN_TRANSIT_TOKEN_BITS, "{weak}: {}", bits(weak));
    }
}

#[test]
fn transit_errors_never_quote_the_token() {
    let fixture = TransitFixture::new();
    let tokens = fixture.one_token() + &fixture.one_token().replace("\"openbao\"", "\"other\"");
    let err = error_of(&fixture.config("development", "plaintext = true", &tokens));
    assert!(!err.to_string().contains("token-one"), "{err}");
    let debug = format!(
        "{:?}",
        Config::parse(&fixture.config("development", "plaintext = true", &fixture.one_token())).unwrap()
    );
    assert!(!debug.contains("token-one"), "{debug}");
}

#[test]
fn a_transit_listener_alone_is_enough_for_a_daemon() {
    let fixture = TransitFixture::new();
    let text = fixture
        .config("development", "plaintext = true", &fixture.one_token())
        .replace("unix_socket = \"/tmp/x.sock\"", "");
    Config::parse(&text).unwrap().require_listener().unwrap();
}

#[test]
fn kmip_needs_tls_with_a_client_ca_under_every_profile() {
    for profile in ["development", "hardened"] {
        let base = MINIMAL.replace("\"development\"", &format!("\"{profile}\""));
        let err = error_of(&(base.clone() + "\n[server.kmip]\nlisten = \"127.0.0.1:1\"\n"));
        assert_eq!(err.path, "server.kmip.tls", "{profile}: {err}");
        assert!(err.message.contains("mutual TLS"), "{err}");
        let err = error_of(
            &(base.clone()
                + "\n[server.kmip]\nlisten = \"127.0.0.1:1\"\n[server.kmip.tls]\ncert_file = \"c\"\nkey_file = \"k\"\n"),
        );
        assert_eq!(err.path, "server.kmip.tls.client_ca_file", "{profile}: {err}");
    }
}

#[test]
fn kmip_fields_are_checked_by_path_and_the_door_is_a_listener() {
    let table = "\n[server.kmip]\nlisten = \"127.0.0.1:5696\"\n[server.kmip.tls]\ncert_file = \"c\"\nkey_file = \"k\"\nclient_ca_file = \"ca\"\n";
    let only_kmip = MINIMAL.replace("unix_socket = \"/tmp/x.sock\"", "") + table;
    let config = Config::parse(&only_kmip).unwrap();
    assert_eq!(config.server.kmip.as_ref().unwrap().listen.port(), 5696);
    config.require_listener().unwrap();
    let err = error_of(&only_kmip.replace("\"127.0.0.1:5696\"", "\"nowhere\""));
    assert_eq!(err.path, "server.kmip.listen", "{err}");
    let err = error_of(&(only_kmip.clone() + "plaintext = true\n"));
    assert_eq!(err.path, "server.kmip.tls.plaintext", "{err}");
}
